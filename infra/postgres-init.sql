-- One database per service, both owned by the compose user.
CREATE DATABASE mlflow OWNER gptops;
CREATE DATABASE prefect OWNER gptops;
