"""The `publish_leaderboard` task: the suite's leaderboard written and logged (tracking.leaderboard), and shown
as the Prefect table artifact `suite-leaderboard` and a markdown artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.retry_policy import retry_if_transient
from tracking.leaderboard import write_and_log


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def publish_leaderboard(rows: list[dict], folder: str, tracking_uri: str | None, tags: dict[str, str]) -> dict:
    """Leaderboard files and MLflow run, then the Prefect artifacts; returns the file paths and the run id."""
    published = write_and_log(rows, folder, tracking_uri, tags)
    create_table_artifact(rows, key="suite-leaderboard", description=published["title"])
    create_markdown_artifact(Path(published["markdown"]).read_text(encoding="utf-8"), key="suite-leaderboard-md",
                             description=published["title"])
    return published
