"""The command line's defaults that are not run values (run values live in ``params.yaml``):
the profile a run uses unless told otherwise, and ``gptops serve``'s ports.

No imports: ``gptops --help`` reads these before anything heavy (pydantic included) loads.
"""

#: The profile a run uses unless told otherwise (every command's ``--profile``, the Run form).
DEFAULT_PROFILE = "tiny"
#: ``gptops serve``'s Prefect UI and API port.
PREFECT_PORT = 4200
#: ``gptops serve``'s MLflow UI port (MLflow's own default, so also the port of the examples of
#: a tracking server in error messages).
MLFLOW_PORT = 5000
