"""MLflow helpers shared by every GameSense model: store set-up, runs, versions, aliases.

Default store: SQLite ``<workdir>/mlflow.db`` with artifacts under ``<workdir>/mlartifacts`` (no server
needed); a ``tracking_uri`` (``http://mlflow:5000``, ``databricks``, ...) points everything at a remote
server instead. Aliases follow MLflow's registry API: ``champion`` serves, ``challenger`` waits.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from gamesense.registry.refs import RegistryRef
from gamesense.settings import process_alive, work_dir


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def setup_tracking(tracking_uri: str | None = None, experiment: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` (default: SQLite store in the working directory) and select
    ``experiment`` (created with a local artifact location when the store is local).

    Returns:
        The tracking URI in use.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    local = uri is None
    if local:
        uri = f"sqlite:///{work_dir() / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if experiment:
        client = MlflowClient()
        if client.get_experiment_by_name(experiment) is None:
            artifact_location = (work_dir() / "mlartifacts" / experiment).as_uri() if local else None
            try:
                client.create_experiment(experiment, artifact_location=artifact_location)
            except MlflowException:  # created concurrently
                pass
        mlflow.set_experiment(experiment)
    return uri


def get_version_by_alias(model_name: str, alias: str):
    """The ``ModelVersion`` holding ``alias``, or None when the model or alias does not exist."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def set_alias(model_name: str, version: str | int, alias: str) -> None:
    """Move ``alias`` to ``version`` of ``model_name`` (MLflow moves it atomically from any other version)."""
    MlflowClient().set_registered_model_alias(model_name, alias, str(version))


def list_model_versions(model_name: str | None = None) -> list[dict]:
    """All registered versions (of one model, or of every model), newest first.

    Returns:
        dicts with keys ``name, version, aliases, run_id, created, tags``.
    """
    client = MlflowClient()
    names = [model_name] if model_name else [m.name for m in client.search_registered_models()]
    rows = []
    for name in names:
        try:
            registered = client.get_registered_model(name)
        except MlflowException:
            continue
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name='{name}'"):
            rows.append(
                {
                    "name": name,
                    "version": str(mv.version),
                    "aliases": sorted(aliases_by_version.get(str(mv.version), [])),
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                    "tags": dict(mv.tags or {}),
                }
            )
    rows.sort(key=lambda r: (r["name"], -int(r["version"])))
    return rows


def resolve_version(ref: RegistryRef):
    """The ``ModelVersion`` a registry reference points at now.

    Raises:
        LookupError: unknown model, alias or version (the message names the reference).
    """
    client = MlflowClient()
    try:
        if ref.version is not None:
            return client.get_model_version(ref.name, ref.version)
        return client.get_model_version_by_alias(ref.name, ref.alias)
    except MlflowException as err:
        raise LookupError(f"model reference {ref.uri!r} not found in the registry: {err.message}") from None


def download_version(version, dst: str | Path | None = None) -> Path:
    """Download the artifacts of a ``ModelVersion`` and return the local path."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst) if dst else None))


def register_version(model_name: str, source: str, run_id: str | None, tags: dict[str, str], description: str = ""):
    """Create a new version of ``model_name`` (creating the registered model on first use).

    Args:
        source: artifact URI of the model files (e.g. ``<run artifact uri>/adapter``).
        tags: version tags (metrics, evaluation data fingerprint, task).

    Returns:
        The new ``ModelVersion``.
    """
    client = MlflowClient()
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        try:
            client.create_registered_model(model_name, description=description)
        except MlflowException:  # created concurrently
            pass
    return client.create_model_version(model_name, source=source, run_id=run_id, tags=tags)


def is_local_store(uri: str | None = None) -> bool:
    """True when the tracking store is a file or SQLite store on this machine (locks work across processes)."""
    uri = uri or mlflow.get_tracking_uri()
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


@contextmanager
def attach_run(run_id: str):
    """Make ``run_id`` the active MLflow run: a no-op when it already is (one open run for a whole in-process
    pipeline), else reopened for the duration (a pipeline step in another process)."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield active
        return
    with mlflow.start_run(run_id=run_id) as run:
        yield run


#: tag naming the process that runs an MLflow run (``<host>:<pid>``), so a later job can tell a live run from one
#: whose process was killed (kill -9, OOM, power loss) and left it RUNNING
RUN_OWNER_TAG = "gamesense.owner"


def run_owner_tags() -> dict[str, str]:
    """``{RUN_OWNER_TAG: "<host>:<pid>"}`` for the current process."""
    return {RUN_OWNER_TAG: f"{socket.gethostname()}:{os.getpid()}"}


def _owner_gone(owner: str | None) -> bool:
    """True when ``owner`` names a process of this machine that no longer exists (other machines: unknown, False)."""
    host, _, pid = (owner or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def end_stale_runs(experiment: str, also: str | None = None) -> list[str]:
    """End as ``KILLED`` the runs of ``experiment`` whose process died without ending them: RUNNING runs owned
    (:data:`RUN_OWNER_TAG`) by a process of this machine that is gone, and ``also`` (a run the caller knows did
    not finish, e.g. an interrupted pipeline's parent run that shows FINISHED between its steps) when its owner
    is gone. A resumed run is reopened as RUNNING and ends FINISHED as usual.

    Returns:
        The run ids marked KILLED.
    """
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    if also:
        try:
            runs.append(client.get_run(also))
        except MlflowException:
            pass
    killed = []
    for run in runs:
        if run.info.status != "KILLED" and _owner_gone(run.data.tags.get(RUN_OWNER_TAG)):
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    return killed


#: version tags of exports: ``export.<kind>`` = the artifact URI, ``export.<kind>.<metric>`` = its parity score
EXPORT_TAG_PREFIX = "export."


def log_export(version, path: str | Path, kind: str, metrics: dict[str, float] | None = None,
               beside: tuple[str | Path, ...] = ()) -> str:  # fmt: skip
    """Log an exported file or folder as an artifact of the version's run (``exports/<kind>/``) and tag the
    version with it (see :data:`EXPORT_TAG_PREFIX`); an earlier export of the same kind is replaced.

    Args:
        version: a ``ModelVersion``.
        kind: e.g. ``merged``, ``gguf-q8_0``.
        metrics: the export's parity scores, each tagged as ``export.<kind>.<name>``.
        beside: more files logged in the same artifact folder (a Modelfile, the parity table).

    Returns:
        The artifact URI (``runs:/<run id>/exports/<kind>[/<file>]``).

    Raises:
        LookupError: the version has no run to hold the artifact.
    """
    client = MlflowClient()
    if not version.run_id:
        raise LookupError(f"{version.name} version {version.version} has no MLflow run to hold its exports")
    path, artifact_path = Path(path), f"exports/{kind}"
    if path.is_dir():
        client.log_artifacts(version.run_id, str(path), artifact_path)
        uri = f"runs:/{version.run_id}/{artifact_path}"
    else:
        client.log_artifact(version.run_id, str(path), artifact_path)
        uri = f"runs:/{version.run_id}/{artifact_path}/{path.name}"
    for extra in beside:
        client.log_artifact(version.run_id, str(extra), artifact_path)
    client.set_model_version_tag(version.name, version.version, f"{EXPORT_TAG_PREFIX}{kind}", uri)
    for name, value in (metrics or {}).items():
        client.set_model_version_tag(version.name, version.version, f"{EXPORT_TAG_PREFIX}{kind}.{name}", f"{value:.4f}")
    return uri


def export_kinds(tags: dict[str, str]) -> list[str]:
    """The export kinds a version's tags record (``merged``, ``gguf-f16``, ...), sorted."""
    return sorted(key[len(EXPORT_TAG_PREFIX):] for key, value in tags.items()
                  if key.startswith(EXPORT_TAG_PREFIX) and value.startswith("runs:/"))  # fmt: skip
