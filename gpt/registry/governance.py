"""Registry governance: the champion alias, its history, explicit promotion and rollback.

Every champion move (the gate's, a promotion by hand, a rollback) goes through
:func:`set_champion` under :func:`registry_lock`, and is appended to the registered model's
history tag, so ``gptops models --history`` can say who moved it and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from gpt.errors import RegistryError
from gpt.registry.listing import read_model_tags, sqlite_path
from gpt.registry.tags import (
    COMPOSED_CAP,
    DECISION,
    HISTORY_TAG,
    TASK_TAG,
    VersionTags,
    capped,
)
from gpt.registry.tracking import client as _client

log = logging.getLogger(__name__)

#: The alias of the version that won the gate (or was promoted by hand).
CHAMPION = "champion"
#: The alias of the newest version that passed its baselines but did not beat the champion.
CHALLENGER = "challenger"


@contextmanager
def registry_lock(tracking_uri: str, name: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialise champion changes of one registered model across processes.

    PostgreSQL: a session advisory lock on a connection derived from the tracking URI. SQLite: an
    exclusive ``flock`` on a file beside the database. Other backends (an MLflow server): no lock
    (the server would have to provide it); concurrent gates there may race.
    """
    if tracking_uri.startswith(("postgresql", "postgres:")):
        import psycopg

        conninfo = re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", tracking_uri)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{int(timeout_s * 1000)}ms'")
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"gptops:{name}",))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"gptops:{name}",))
    elif (db := sqlite_path(tracking_uri)) is not None:
        import fcntl

        lock_path = db.parent / f".{db.name}.registry.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as fh:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(f"registry lock {lock_path} held for over "
                                            f"{timeout_s:.0f}s; is another gptops stuck?"
                                            ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


def champion_version(client, name: str):  # -> ModelVersion | None
    """The version holding the champion alias, or None (no such model or no champion yet)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - MLflow raises RestException/MlflowException
        return None


def _current_champion(client, name: str) -> str | None:
    champ = champion_version(client, name)
    return str(champ.version) if champ else None


def set_champion(client, name: str, version: str, reason: str, action: str = "gate",
                 overrode: str = "") -> None:
    """Move the champion alias and append the move to the registered model's history tag.

    ``action`` is ``gate`` (the promotion gate), ``promote`` (explicit) or ``rollback``;
    ``overrode`` is the gate's rejection a forced promotion went past (kept in the entry).
    """
    rm = client.get_registered_model(name)
    history = _parse_history(rm.tags.get(HISTORY_TAG))
    entry = {"version": str(version), "action": action,
             "previous": _current_champion(client, name),
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "reason": reason[:200]}
    if overrode:
        entry["overrode"] = overrode[:300]
    history.append(entry)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    # MLflow caps tag values (tags.VALUE_CAP): keep the newest entries that fit.
    keep = history[-50:]
    while len(keep) > 1 and len(json.dumps(keep)) > COMPOSED_CAP:
        keep = keep[1:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(keep))
    older = re.search(r"gptops model \((.+?)\)", rm.description or "")  # before TASK_TAG
    task = rm.tags.get(TASK_TAG) or (older.group(1) if older else "")
    client.update_registered_model(name, description=model_description(name, task, keep))


def model_description(name: str, task: str, history: list[dict[str, Any]]) -> str:
    """The registered model's page in the MLflow UI: what it is, how to load it, and the
    champion history as a table (newest first)."""
    kind = {"text-generation": "a GPT language model (text generation)",
            "text-classification": "a GPT classifier (text classification)"}.get(
                task, f"a GPT model ({task or 'transformers'})")
    example = ('model.predict(["Return the"], params={"max_new_tokens": 20})'
               if task == "text-generation" else 'model.predict(["a text to classify"])')
    lines = [f"**{name}**: {kind}, trained and registered by gptops. The `{CHAMPION}` alias is "
             "the version that won the promotion gate (or was promoted by hand).", "",
             "Load the champion:", "", "```python", "import mlflow", "",
             f'model = mlflow.pyfunc.load_model("models:/{name}@{CHAMPION}")', example, "```",
             "", "or from a workspace: `gptops "
             + ("generate" if task == "text-generation" else "predict")
             + f" --model {name}`.", ""]
    if history:
        lines += ["Champion history (newest first):", "",
                  "| at | action | champion | previous | reason |", "|---|---|---|---|---|"]
        for h in reversed(history):
            reason = str(h.get("reason", "")).replace("|", "/").replace("\n", " ")
            if h.get("overrode"):
                reason += f" (overrode the gate: {h['overrode']})".replace("|", "/")
            lines.append(f"| {h.get('at', '')} | {h.get('action', 'gate')} | v{h['version']} | "
                         f"{'v' + str(h['previous']) if h.get('previous') else ''} | {reason} |")
    return capped("\n".join(lines), COMPOSED_CAP)  # MLflow caps descriptions too


def _parse_history(raw: str | None) -> list[dict[str, Any]]:
    try:
        history = json.loads(raw or "[]")
    except ValueError:
        log.warning("unreadable %s tag; starting a new history", HISTORY_TAG)
        return []
    return [h for h in history if isinstance(h, dict) and "version" in h]


def unknown_model(name: str, tracking_uri: str, known: Iterable[str],
                  hint: str = "") -> RegistryError:
    """The one line for a model name the registry does not have, listing those it has."""
    return RegistryError(f"no registered model '{name}' at {tracking_uri}; registered models: "
                         f"{', '.join(sorted(known)) or '(none)'}{hint}")


def unknown_version(name: str, version: str, versions: Iterable[str]) -> RegistryError:
    """The one line for a version the model does not have, listing those it has."""
    return RegistryError(f"model '{name}' has no version '{version}'; versions: "
                         f"{', '.join(versions) or '(none)'}")


def unknown_alias(name: str, alias: str, tracking_uri: str,
                  aliases: dict[str, str]) -> RegistryError:
    """The one line for an alias the model does not have, listing ``alias=vN`` of those it has."""
    listed = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items()))
    return RegistryError(f"model '{name}' has no alias '{alias}' at {tracking_uri}; its "
                         f"aliases: {listed or '(none)'}")


def require_model(client, tracking_uri: str, name: str):  # -> RegisteredModel
    """The registered model ``name``.

    Raises:
        RegistryError: no such model (listing those there are).
    """
    try:
        return client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
        known = (m.name for m in client.search_registered_models())
        raise unknown_model(name, tracking_uri, known) from exc


def version_numbers(client, name: str) -> list[str]:
    """The version numbers of ``name``, oldest first."""
    return sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")),
                  key=int)


def champion_history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """The champion moves of ``name``, oldest first: version, action, previous, at, reason.

    Raises:
        RegistryError: ``name`` is not a registered model.
    """
    path = sqlite_path(tracking_uri)
    tags = read_model_tags(path) if path else None
    if tags is not None:  # a workspace's SQLite registry: read directly, without MLflow's start-up
        if name not in tags:
            raise unknown_model(name, tracking_uri, tags)
        return _parse_history(tags[name].get(HISTORY_TAG))
    client = _client(tracking_uri)
    rm = require_model(client, tracking_uri, name)
    return _parse_history(rm.tags.get(HISTORY_TAG))


def promote(tracking_uri: str, name: str, version: str, reason: str,
            force: bool = False) -> dict[str, Any]:
    """Make ``version`` the champion of ``name`` by hand, recording ``reason`` in the history.

    A version the gate tagged ``rejected`` (worse than its trivial baseline, or a non-finite
    metric) is promoted only with ``force``; the rejection it overrode goes into the history
    entry and into the result (``overrode``).

    Raises:
        RegistryError: unknown model or version, an empty reason, or a rejected version
            without ``force`` (naming the gate's reason).
    """
    if not reason.strip():
        raise RegistryError("promote needs --reason: say why this version becomes champion")
    client = _client(tracking_uri)
    require_model(client, tracking_uri, name)
    version = str(version).strip().removeprefix("v")
    with registry_lock(tracking_uri, name):
        versions = version_numbers(client, name)
        if version not in versions:
            raise unknown_version(name, version, versions)
        previous = _current_champion(client, name)
        if previous == version:
            raise RegistryError(f"model '{name}' version {version} is already the champion")
        rejection = VersionTags.from_tags(client.get_model_version(name, version).tags or {}
                                          ).rejected or ""
        why = _one_line(rejection).removeprefix("rejected: ")
        if rejection and not force:
            raise RegistryError(f"model '{name}' version {version} was rejected by the gate "
                                f"({why}); pass --force to promote it anyway (the override is "
                                "kept in the champion history)")
        decision = f"promoted by hand: {reason.strip()}"
        if rejection:
            decision = (f"promoted by hand with --force over the gate's rejection ({why}): "
                        f"{reason.strip()}")
        return _move_champion(client, name, version, previous, reason, "promote", decision,
                              overrode=why if rejection else "")


def _one_line(text: str, limit: int = 240) -> str:
    """A tag's text on one line, cut to ``limit`` characters (for one-line messages)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _rollback_target(history: list[dict[str, Any]], current: str | None,
                     existing: set[str]) -> str | None:
    """The champion before ``current``: replay the history as a stack (a rollback pops it)."""
    stack: list[str] = []
    for h in history:
        if h.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != str(h["version"]):
                stack.append(str(h["version"]))
        else:
            stack.append(str(h["version"]))
    while stack and stack[-1] == current:
        stack.pop()
    while stack and stack[-1] not in existing:  # deleted versions cannot come back
        stack.pop()
    return stack[-1] if stack else None


def rollback(tracking_uri: str, name: str, reason: str) -> dict[str, Any]:
    """Move the champion of ``name`` back to the previous champion in its history.

    Successive rollbacks walk further back (each undoes one promotion), never re-promoting
    the version just rolled back from.

    Raises:
        RegistryError: unknown model, no champion, no earlier champion, or an empty reason.
    """
    if not reason.strip():
        raise RegistryError("rollback needs --reason: say why the champion is rolled back")
    client = _client(tracking_uri)
    require_model(client, tracking_uri, name)
    with registry_lock(tracking_uri, name):
        rm = client.get_registered_model(name)
        history = _parse_history(rm.tags.get(HISTORY_TAG))
        current = _current_champion(client, name)
        if current is None:
            raise RegistryError(f"model '{name}' has no champion to roll back; versions: "
                                f"{', '.join(version_numbers(client, name)) or '(none)'}")
        target = _rollback_target(history, current, set(version_numbers(client, name)))
        if target is None:
            raise RegistryError(f"model '{name}': no earlier champion than v{current} in the "
                                f"history; use `gptops promote {name} VERSION` instead")
        return _move_champion(client, name, target, current, reason, "rollback",
                              f"rolled back to (from v{current}): {reason.strip()}")


def _move_champion(client, name: str, version: str, previous: str | None, reason: str,
                   action: str, decision: str, overrode: str = "") -> dict[str, Any]:
    """Move the alias by hand (caller holds the lock), tag why, and describe the move."""
    set_champion(client, name, version, reason.strip(), action=action, overrode=overrode)
    client.set_model_version_tag(name, version, DECISION, capped(decision))
    with contextlib.suppress(Exception):  # a champion is no longer a challenger
        if str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)
    log.info("%s: champion v%s -> v%s (%s: %s)", name, previous, version, action, reason)
    out = {"name": name, "version": version, "previous": previous, "action": action,
           "reason": reason.strip()}
    if overrode:
        out["overrode"] = overrode
    return out


def resolve_alias(tracking_uri: str, name: str, alias: str = CHAMPION, client=None):
    """The model version behind ``<name>@<alias>``.

    Raises:
        RegistryError: unknown model (listing the registered ones) or unknown alias (listing
            the model's aliases).
    """
    client = client or _client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:  # noqa: BLE001
        try:
            rm = client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - the model itself is unknown
            known = (m.name for m in client.search_registered_models())
            raise unknown_model(name, tracking_uri, known, "; run `gptops run` first") from exc
        aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
        raise unknown_alias(name, alias, tracking_uri, aliases) from exc
