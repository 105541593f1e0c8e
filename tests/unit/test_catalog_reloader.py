"""Catalog reload: a good file replaces the catalog, a bad one keeps the old and says why."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from services.catalog.config import Catalog, load_catalog
from services.catalog.reloader import CatalogReloader

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "catalog"
LOGGER = "test.catalog.reloader"

ONE_MODEL = """
providers: {demo: {kind: demo}}
models:
  - {id: first, deployments: [{provider: demo}]}
"""
TWO_MODELS = """
providers: {demo: {kind: demo}}
models:
  - {id: first, deployments: [{provider: demo}]}
  - {id: second, deployments: [{provider: demo}]}
plans: [{id: solo, requests_per_minute: 1}]
"""


class Published:
    """Stands in for the server: keeps every catalog on_change hands over."""

    def __init__(self) -> None:
        self.catalogs: list[Catalog] = []
        self.changed = asyncio.Event()

    def __call__(self, catalog: Catalog) -> None:
        self.catalogs.append(catalog)
        self.changed.set()

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.catalogs[-1].models]


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(ONE_MODEL)
    return path


def _reloader(path: Path, published: Published, poll_seconds: float = 1.0) -> CatalogReloader:
    return CatalogReloader(path, {}, published, poll_seconds=poll_seconds, log=logging.getLogger(LOGGER))


def test_good_reload_hands_over_the_new_catalog(catalog_file: Path) -> None:
    published = Published()
    reloader = _reloader(catalog_file, published)
    catalog_file.write_text(TWO_MODELS)
    assert reloader.reload() is True
    assert published.model_ids == ["first", "second"]
    assert [p.id for p in published.catalogs[-1].plans] == ["solo"]


def test_bad_reload_keeps_the_old_catalog_and_logs_why(catalog_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    published = Published()
    reloader = _reloader(catalog_file, published)
    bad = FIXTURES / "negative_price.yaml"
    catalog_file.write_text(bad.read_text())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert reloader.reload() is False
    assert published.catalogs == []
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "catalog reload failed, keeping the previous catalog: "
        f"{catalog_file}: models[0](local).pricing.input: must not be negative (got -1)"
    )


def test_missing_file_keeps_the_old_catalog(catalog_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    published = Published()
    reloader = _reloader(catalog_file, published)
    catalog_file.unlink()
    assert reloader.changed() is True
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert reloader.reload() is False
    assert published.catalogs == []
    assert f"{catalog_file}: cannot read" in caplog.text
    assert reloader.changed() is False  # the same absence is not reported again


def test_on_change_failing_is_logged_not_raised(catalog_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken(catalog: Catalog) -> None:
        raise RuntimeError("publish failed")

    reloader = CatalogReloader(catalog_file, {}, broken, log=logging.getLogger(LOGGER))
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert reloader.reload() is False
    assert "applying the new catalog failed" in caplog.text and "publish failed" in caplog.text


def test_poll_seconds_must_be_positive(catalog_file: Path) -> None:
    with pytest.raises(ValueError, match="poll_seconds"):
        CatalogReloader(catalog_file, {}, Published(), poll_seconds=0)


class Warnings(logging.Handler):
    """Collects the reloader's warnings and wakes a waiting test."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.arrived.set()


def _replace(path: Path, text: str) -> None:
    """Write as deployment tools do: a new file renamed over the old one."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


async def test_run_reloads_when_the_file_changes(catalog_file: Path) -> None:
    published = Published()
    warnings = Warnings()
    logging.getLogger(LOGGER).addHandler(warnings)
    reloader = _reloader(catalog_file, published, poll_seconds=0.02)
    task = asyncio.create_task(reloader.run())
    try:
        await asyncio.sleep(0.1)
        assert published.catalogs == []  # an unchanged file is not reloaded

        await asyncio.to_thread(catalog_file.write_text, TWO_MODELS)  # edited in place
        await asyncio.wait_for(published.changed.wait(), timeout=0.8)
        assert published.model_ids == ["first", "second"]

        # A bad edit is reported once and changes nothing; the next good edit is picked up.
        published.changed.clear()
        await asyncio.to_thread(_replace, catalog_file, "models: [\n")
        await asyncio.wait_for(warnings.arrived.wait(), timeout=0.8)
        await asyncio.sleep(0.1)  # several more polls of the same bad file
        assert len(published.catalogs) == 1
        [message] = warnings.messages
        assert message.startswith(
            f"catalog reload failed, keeping the previous catalog: {catalog_file}: not valid YAML: line 2"
        ), message
        await asyncio.to_thread(_replace, catalog_file, ONE_MODEL)
        await asyncio.wait_for(published.changed.wait(), timeout=0.8)
        assert published.model_ids == ["first"]
        assert len(warnings.messages) == 1
    finally:
        logging.getLogger(LOGGER).removeHandler(warnings)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_sighup_reloads(catalog_file: Path) -> None:
    published = Published()
    reloader = _reloader(catalog_file, published)
    loop = asyncio.get_running_loop()
    reloader.install_sighup(loop)
    try:
        # SIGHUP means "reload now", even when the file looks unchanged.
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(published.changed.wait(), timeout=0.8)
        assert published.model_ids == ["first"]
        assert published.catalogs[0] == load_catalog(catalog_file, {})
    finally:
        assert loop.remove_signal_handler(signal.SIGHUP) is True
