"""Snapshots and restore: a consistent copy under a concurrent write load, through the
admin route and the CLI, and every kind of bad snapshot refused with nothing placed."""

from __future__ import annotations

import json
import tarfile
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedsvc.client import Client
from tests.conftest import RunningServer, make_settings, wait_for

QUERIES = ["vitamin D deficiency", "protein kinase signalling", "tumor growth in mice", "written live 7"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, bundled_model: Path, mini_beir: Path):
    from indexing.job import BuildJob, BuildOptions

    settings = make_settings(tmp_path_factory.mktemp("snap-home"), bundled_model, chunk_size=64)
    BuildJob(settings, "src", mini_beir, BuildOptions()).run()
    return settings


def cli(settings, *args: str):
    from embedsvc.cli import app

    return CliRunner().invoke(app, ["--home", str(settings.home), *args])


def settled(client: Client, name: str) -> bool:
    return client.get_collection(name).pending == 0


def results(client: Client, name: str) -> list:
    return [[(h.id, round(h.score, 5)) for h in client.search(name, q, k=10, mode=mode).hits]
            for q in QUERIES for mode in ("dense", "lexical", "hybrid")]


def test_a_snapshot_under_writes_restores_to_the_state_at_its_moment(home, tmp_path: Path) -> None:
    written: list[tuple[int, list[str]]] = []  # (seq, ids) of every committed write
    stop = threading.Event()

    with RunningServer(home) as server, Client(server.url) as client:
        def write_load() -> None:
            n = 0
            while not stop.is_set():
                ids = [f"live-{n}-{i}" for i in range(3)]
                result = client.upsert("src", [{"id": d, "text": f"written live {n} {d}"} for d in ids])
                written.append((result.seq, ids))
                n += 1

        writer = threading.Thread(target=write_load)
        writer.start()
        try:
            wait_for(lambda: len(written) >= 5)
            snap = client.snapshot("src")  # the admin route, while writes keep coming
            wait_for(lambda: written and written[-1][0] > snap.seq)  # writes went on after it
        finally:
            stop.set()
            writer.join()

        assert Path(snap.path).is_file() and Path(snap.path).parent == home.snapshots_dir
        restored = cli(home, "restore", snap.path, "--as", "copy")
        assert restored.exit_code == 0, restored.output
        assert "restored copy" in restored.output

        # the source as it was at the snapshot: drop what was written after it
        later = [d for seq, ids in written if seq > snap.seq for d in ids]
        kept = [d for seq, ids in written if seq <= snap.seq for d in ids]
        assert later and kept
        client.delete("src", ids=later)
        assert client.get_collection("copy").documents == client.get_collection("src").documents == snap.documents
        assert all(client.get_document("copy", d).id == d for d in kept)
        wait_for(lambda: settled(client, "src") and settled(client, "copy"), timeout=120)
        assert results(client, "copy") == results(client, "src")


def test_snapshot_and_restore_from_the_cli_as_a_folder_and_a_tar(home, tmp_path: Path) -> None:
    folder, tar = tmp_path / "snap-dir", tmp_path / "snap.tar"
    for path in (folder, tar):
        made = cli(home, "snapshot", "src", str(path))
        assert made.exit_code == 0, made.output
    manifest = json.loads((folder / "snapshot.json").read_text())
    assert manifest["format"] == "embedsvc-snapshot" and manifest["collection"] == "src"
    assert {"collection.db", f"versions/{manifest['current_version']:04d}/manifest.json"} <= set(manifest["files"])

    again = cli(home, "snapshot", "src", str(tar))
    assert again.exit_code == 1 and "snapshots never overwrite" in again.output

    assert cli(home, "restore", str(tar), "--as", "from-tar").exit_code == 0
    assert cli(home, "restore", str(folder), "--as", "from-dir").exit_code == 0
    taken = cli(home, "restore", str(tar), "--as", "from-tar")
    assert taken.exit_code == 1 and "--replace" in taken.output
    replaced = cli(home, "restore", str(folder), "--as", "from-tar", "--replace")
    assert replaced.exit_code == 0, replaced.output
    with RunningServer(home) as server, Client(server.url) as client:
        for name in ("from-tar", "from-dir"):
            assert client.get_collection(name).documents == manifest["documents"]
        assert results(client, "from-tar")[:3] == results(client, "src")[:3]


def damaged(folder: Path) -> None:
    db = folder / "collection.db"
    data = bytearray(db.read_bytes())
    data[len(data) // 2] ^= 0xFF
    db.write_bytes(bytes(data))


def newer(folder: Path) -> None:
    manifest = json.loads((folder / "snapshot.json").read_text())
    manifest["schema_version"] = 999
    (folder / "snapshot.json").write_text(json.dumps(manifest))


def partial(folder: Path) -> None:
    next(p for p in (folder / "versions").rglob("*") if p.is_file()).unlink()


def foreign(folder: Path) -> None:
    (folder / "snapshot.json").write_text(json.dumps({"format": "something-else"}))


def extra_file(folder: Path) -> None:
    (folder / "versions" / "notes.txt").write_text("not from a snapshot")


@pytest.mark.parametrize(("spoil", "message"), [
    (damaged, "damaged snapshot: collection.db does not match its checksum"),
    (newer, "made by a newer embedsvc"),
    (partial, "partial snapshot: 1 file(s) missing"),
    (foreign, "not an embedsvc snapshot"),
    (extra_file, "files its manifest does not list"),
])
def test_bad_snapshots_are_refused_and_nothing_is_placed(home, tmp_path: Path, spoil, message: str) -> None:
    folder = tmp_path / "snap"
    assert cli(home, "snapshot", "src", str(folder)).exit_code == 0
    spoil(folder)
    refused = cli(home, "restore", str(folder), "--as", "spoilt")
    assert refused.exit_code == 1 and message in refused.output
    assert not (home.collections_dir / "spoilt").exists()
    assert not [p for p in home.collections_dir.iterdir() if p.name.startswith(".restoring-")]


def test_a_cut_short_tar_and_a_foreign_file_are_refused(home, tmp_path: Path) -> None:
    tar = tmp_path / "snap.tar"
    assert cli(home, "snapshot", "src", str(tar)).exit_code == 0
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    refused = cli(home, "restore", str(cut), "--as", "cut")
    assert refused.exit_code == 1 and ("not a readable snapshot" in refused.output or "partial" in refused.output)

    stranger = tmp_path / "stranger.tar"
    with tarfile.open(stranger, "w") as out:
        out.add(__file__, arcname="test.py")
    refused = cli(home, "restore", str(stranger))
    assert refused.exit_code == 1 and "not an embedsvc snapshot" in refused.output
    assert not (home.collections_dir / "cut").exists()

    missing = cli(home, "restore", str(tmp_path / "nowhere.tar"))
    assert missing.exit_code == 1 and "no snapshot at" in missing.output


def test_the_snapshot_route_needs_an_admin_key_and_a_real_collection(home, tmp_path: Path) -> None:
    from embedsvc.client import Forbidden, NotFound
    from embedsvc.keys import Scope, create_key

    settings = home.model_copy(update={"api_keys_file": tmp_path / "keys"})
    reader, admin = create_key(settings, Scope.read, "reader"), create_key(settings, Scope.admin, "ops")
    with RunningServer(settings) as server:
        with Client(server.url, api_key=reader) as client, pytest.raises(Forbidden):
            client.snapshot("src")
        with Client(server.url, api_key=admin) as client:
            with pytest.raises(NotFound):
                client.snapshot("no-such-collection")
            assert client.snapshot("src").documents >= 1
