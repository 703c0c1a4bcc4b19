"""`nanogpt prepare` in folders it does not own: the folder lock, links, sources that are no text, and the
commands that messages suggest, run as printed."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanogpt_lib import cli, data, datasets
from nanogpt_lib.data import load_prepared, prepare_char_dataset
from nanogpt_lib.datasets import LOCK_FILE, lock_folder, unlock_folder

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
MINE = "my notes: do not lose them\n"
# appended to a suggested `nanogpt train` so that it ends at once: a tiny model, two steps
QUICK_TRAIN = [
    *("--n-layer", "1", "--n-head", "1", "--n-embd", "16", "--block-size", "8", "--batch-size", "2"),
    *("--max-iters", "2", "--eval-interval", "2", "--eval-iters", "1", "--device", "cpu", "--quiet"),
]
HOLD = (
    "import sys; from nanogpt_lib.datasets import lock_folder; lock_folder(sys.argv[1], who='process'); "
    "print('locked', flush=True); sys.stdin.readline()"
)
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes: Linux and macOS")


def victim(tmp_path: Path) -> Path:
    """A user's file that links in a crafted folder point at."""
    path = tmp_path / "my_notes.txt"
    path.write_text(MINE)
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def suggested(message: str) -> list[str]:
    """The commands a message suggests: each `nanogpt ... --option ...` between backticks (not a bare
    `nanogpt prepare`, which names the command)."""
    return [c for c in re.findall(r"`(nanogpt [^`]+)`", message) if " --" in c]


def run_suggested(command: str, capsys, extra: list[str] = ()) -> str:
    """Run a suggested command as printed (plus `extra`), in this process; returns its stdout."""
    words = shlex.split(command)
    assert words[0] == "nanogpt"
    code, out, err = run_cli([*words[1:], *extra], capsys)
    assert code == 0, f"`{command}` failed: {err}"
    return out


def inside(path: Path, folder: Path) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working folder of its own, and a data location of its own holding `shakespeare_char` (the default data)."""
    home = tmp_path / "datahome"
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(home))
    prepare_char_dataset(TEXT, home / "shakespeare_char")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


# --- the lock: never through a link ------------------------------------------------------------------------


def test_the_lock_never_writes_through_a_link(tmp_path):
    mine, folder = victim(tmp_path), tmp_path / "theirs"
    folder.mkdir()
    (folder / LOCK_FILE).symlink_to(mine)
    lock_folder(folder, who="process")
    try:
        lock = folder / LOCK_FILE
        assert not lock.is_symlink() and lock.read_text().strip() == str(os.getpid())
        assert mine.read_text() == MINE
    finally:
        unlock_folder(folder)
    assert not (folder / LOCK_FILE).exists() and mine.read_text() == MINE


@needs_fifo
def test_the_lock_replaces_a_second_name_of_a_file_and_a_pipe(tmp_path):
    mine, folder = victim(tmp_path), tmp_path / "theirs"
    folder.mkdir()
    os.link(mine, folder / LOCK_FILE)  # the same file under two names: writing one would change the other
    lock_folder(folder)
    assert mine.read_text() == MINE and mine.stat().st_nlink == 1
    assert (folder / LOCK_FILE).read_text().strip() == str(os.getpid())
    unlock_folder(folder)
    os.mkfifo(folder / LOCK_FILE)
    lock_folder(folder)
    assert (folder / LOCK_FILE).is_file()
    unlock_folder(folder)
    assert not (folder / LOCK_FILE).exists()


def test_a_folder_as_lock_file_is_a_clear_error(tmp_path):
    (tmp_path / LOCK_FILE).mkdir()
    with pytest.raises(RuntimeError, match=f"cannot use .*{re.escape(LOCK_FILE)} as a lock file.*remove it"):
        lock_folder(tmp_path)


def test_resume_never_writes_the_pid_through_a_linked_lock_file(tmp_path, capsys):
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    prepare_char_dataset(TEXT, prepared)
    assert run_cli(["train", "--data", str(prepared), "--out", str(run), *QUICK_TRAIN], capsys)[0] == 0
    mine = victim(tmp_path)
    (run / LOCK_FILE).symlink_to(mine)
    code, _, err = run_cli(["train", "--resume", "--out", str(run), "--max-iters", "3", "--quiet"], capsys)
    assert code == 0, err
    assert mine.read_text() == MINE, "the linked file was truncated or written"
    assert not (run / LOCK_FILE).exists()


def test_prepare_never_writes_the_pid_through_a_linked_lock_file(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    out, mine = tmp_path / "theirs", victim(tmp_path)
    out.mkdir()
    (out / LOCK_FILE).symlink_to(mine)
    argv = ["prepare", "text", "--source", str(tmp_path / "t.txt"), "--out", str(out), "--quiet"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert mine.read_text() == MINE and not (out / LOCK_FILE).exists()
    assert load_prepared(out).tokenizer.decode(load_prepared(out).train[:14]) == TEXT[:14]


def test_temporary_and_final_dataset_files_are_never_written_through_links(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    out = tmp_path / "theirs"
    out.mkdir()
    names = [f"{n}{t}" for n in ("train.bin", "val.bin", "meta.json") for t in (".tmp", "")]
    victims = {}
    for name in names:
        victims[name] = tmp_path / f"victim_{name}"
        victims[name].write_text(MINE)
        (out / name).symlink_to(victims[name])
    data.prepare_text(tmp_path / "t.txt", out, block_size=8)
    assert all(path.read_text() == MINE for path in victims.values())
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert not any((out / n).is_symlink() for n in ("meta.json", "train.bin", "val.bin"))
    p = load_prepared(out)
    assert p.tokenizer.decode(np.concatenate([p.train, p.val])) == TEXT


# --- one preparation at a time ------------------------------------------------------------------------------


def test_prepare_refuses_a_folder_another_process_holds(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["prepare", "text", "--source", str(tmp_path / "t.txt"), "--out", str(out), "--quiet"]
        code, _, err = run_cli(argv, capsys)
        assert code == 1 and f"is in use by another process (PID {holder.pid})" in err and "--out" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE], "nothing was written beside the holder"
    finally:
        holder.communicate("\n", timeout=60)
    assert run_cli(argv, capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_two_prepares_into_one_folder_never_mix_their_files(tmp_path):
    texts = {name: (f"{name} says: " + TEXT) * 400 for name in ("alpha", "omega")}
    for name, text in texts.items():
        (tmp_path / f"{name}.txt").write_text(text)
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).resolve().parents[1])}

    def start(name: str) -> subprocess.Popen:
        argv = ["prepare", "text", "--source", str(tmp_path / f"{name}.txt"), "--out", str(out), "--quiet"]
        command = [sys.executable, "-m", "nanogpt_lib.cli", *argv]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    runs = [start(name) for name in texts]
    results = [run.communicate(timeout=300) + (run.returncode,) for run in runs]
    for _, err, code in results:
        assert code == 0 or (code == 1 and "is in use by another process" in err), err
    assert any(code == 0 for *_, code in results)
    p = load_prepared(out)  # whole and consistent: the text of one of the two, never a mixture
    assert p.tokenizer.decode(np.concatenate([p.train, p.val])) in texts.values()
    assert sorted(q.name for q in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


# --- what --source and --out may be ----------------------------------------------------------------------------


def test_prepare_refuses_an_out_inside_or_equal_to_the_source(tmp_path, workdir, capsys):
    src = tmp_path / "books"
    (src / "act1").mkdir(parents=True)
    (src / "act1" / "a.txt").write_text(TEXT)
    before = listing(src)
    for out, says in [(src, "is --source itself"), (src / "prepared", "is inside --source"),
                      (src / "act1" / "deep", "is inside --source")]:  # fmt: skip
        code, _, err = run_cli(["prepare", "text", "--source", str(src), "--out", str(out), "--quiet"], capsys)
        assert code == 1 and says in err and "read the prepared files as text" in err, err
        assert listing(src) == before and not (src / "prepared").exists() and not (src / "act1" / "deep").exists()
    suggestion = re.search(r"`(--out [^`]+)`", err).group(1)
    code, _, err = run_cli(["prepare", "text", "--source", str(src), *shlex.split(suggestion), "--quiet"], capsys)
    assert code == 0, err
    assert not inside(shlex.split(suggestion)[1], src) and listing(src) == before


def test_prepare_refuses_to_replace_its_own_source_file(tmp_path, capsys):
    (tmp_path / "meta.json").write_text(TEXT)
    argv = ["prepare", "text", "--source", str(tmp_path / "meta.json"), "--out", str(tmp_path), "--quiet"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "would replace" in err and (tmp_path / "meta.json").read_text() == TEXT


@pytest.mark.parametrize("kind", ["fifo", "device", "broken link"])
def test_a_source_that_is_no_regular_file_is_named_for_what_it_is(tmp_path, capsys, kind):
    source = tmp_path / "source"
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("named pipes: Linux and macOS")
        os.mkfifo(source)
        says = "is a named pipe (FIFO), not a regular file"
    elif kind == "device":
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero here")
        source, says = Path("/dev/zero"), "is a character device, not a regular file"
    else:
        source.symlink_to(tmp_path / "gone.txt")
        says = "is a broken symbolic link"
    out = tmp_path / "out"
    for argv in (["prepare", "text"], ["prepare", "shakespeare_char"]):
        code, _, err = run_cli([*argv, "--source", str(source), "--out", str(out), "--quiet"], capsys)
        assert code == 1 and says in err and "does not exist" not in err, err
        assert not out.exists()


def test_prepare_text_names_the_files_it_skipped_and_the_hidden_ones(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (src / ".env").write_text("SECRET=1\n")
    (src / "a.txt").write_text(TEXT)
    binaries = [f"img/{i}.png" for i in range(5)]
    for name in binaries:
        (src / name).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    argv = ["prepare", "text", "--source", str(src), "--out", str(tmp_path / "out"), "--quiet"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert "skipped 5 binary file(s): img/0.png, img/1.png, img/2.png and 2 more (--verbose names them all)" in out
    assert "left out 2 hidden file(s) or folder(s), whose names start with '.': .env, .git" in out
    code, out, _ = run_cli([*argv, "--verbose"], capsys)
    assert code == 0 and f"skipped 5 binary file(s): {', '.join(binaries)}\n" in out
    (src / "img").rename(tmp_path / "img")
    for name in (".env", ".git"):
        os.rename(src / name, tmp_path / name)
    code, out, _ = run_cli(argv, capsys)
    assert code == 0 and "skipped" not in out and "hidden" not in out, "nothing left out, nothing said"


def test_data_given_a_file_says_it_is_a_file(tmp_path, workdir):
    (workdir / "notes.txt").write_text(TEXT)
    (workdir / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    for given in ("notes.txt", str(workdir / "notes.txt")):
        with pytest.raises(FileNotFoundError, match="notes.txt is a text file, not a prepared dataset") as e:
            load_prepared(given)
        assert "does not exist" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="logo.png is a file: --data takes a folder"):
        load_prepared("logo.png")
    prepare_char_dataset(TEXT, workdir / "prepared")
    with pytest.raises(FileNotFoundError, match="is a file of the prepared dataset .*prepared: give --data the folder"):
        load_prepared(workdir / "prepared" / "meta.json")


# --- every suggested command works as printed and keeps text, data and runs apart --------------------------


def test_training_on_a_folder_of_text_suggests_commands_that_work_and_keep_it_clean(workdir, capsys):
    raw = workdir / "my books"
    (raw / "vol 1").mkdir(parents=True)
    (raw / "vol 1" / "a.txt").write_text(TEXT)
    (raw / "b.txt").write_text(TEXT.upper())
    before = listing(raw)
    code, _, err = run_cli(["train", "--data", str(raw), *QUICK_TRAIN], capsys)
    assert code == 1 and "holds text, not a prepared dataset" in err
    prepare, train = suggested(err)
    assert prepare.startswith("nanogpt prepare text --source") and train.startswith("nanogpt train --data")
    run_suggested(prepare, capsys)
    run_suggested(train, capsys, QUICK_TRAIN)
    prepared, run = Path(shlex.split(prepare)[-1]), Path(shlex.split(train)[-1])
    assert listing(raw) == before, "the folder of text is left as it was"
    assert not inside(prepared, raw) and not inside(run, raw) and not inside(run, prepared)
    assert (prepared / "meta.json").is_file() and (run / "last" / "state.json").is_file()
    code, _, err = run_cli(["train", "--data", str(raw), *QUICK_TRAIN], capsys)  # again: new folders, none reused
    again = suggested(err)
    assert Path(shlex.split(again[0])[-1]) != prepared and Path(shlex.split(again[1])[-1]) != run


def test_training_on_a_text_file_suggests_commands_that_work(workdir, capsys):
    (workdir / "notes.txt").write_text(TEXT)
    code, _, err = run_cli(["train", "--data", "notes.txt", *QUICK_TRAIN], capsys)
    assert code == 1 and "is a text file" in err
    prepare, train = suggested(err)
    run_suggested(prepare, capsys)
    run_suggested(train, capsys, QUICK_TRAIN)
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt", "out"]  # the data went to the data location


def test_sampling_from_a_data_folder_suggests_a_run_of_its_own(workdir, capsys):
    prepared = workdir / "data" / "tiny"
    prepare_char_dataset(TEXT, prepared)
    code, _, err = run_cli(["sample", "--ckpt", str(prepared), "--max-new-tokens", "5"], capsys)
    assert code == 1 and "is a prepared dataset, not a checkpoint" in err
    train, sample = suggested(err)
    assert "--data" in shlex.split(train)
    run_suggested(train, capsys, QUICK_TRAIN)
    run = Path(shlex.split(train)[-1])
    assert not inside(run, prepared)
    assert sorted(p.name for p in prepared.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert run_suggested(sample, capsys, ["--max-new-tokens", "5", "--seed", "1"])


def test_sampling_from_a_missing_run_suggests_training_it(workdir, capsys):
    code, _, err = run_cli(["sample", "--ckpt", "runs/first", "--max-new-tokens", "5"], capsys)
    assert code == 1 and "no checkpoint at runs/first" in err
    (train,) = suggested(err)
    run_suggested(train, capsys, QUICK_TRAIN)  # on the default data: shakespeare_char in the data location
    assert (workdir / "runs" / "first" / "last" / "state.json").is_file()
    (workdir / "notes").mkdir()
    (workdir / "notes" / "a.txt").write_text(TEXT)
    code, _, err = run_cli(["sample", "--ckpt", "notes"], capsys)
    assert code == 1 and suggested(err) == [], "no run is suggested inside a folder holding other files"


@pytest.mark.skipif(not os.environ.get("NANOGPT_TINYSHAKESPEARE"), reason="needs a local copy of tiny Shakespeare")
def test_missing_data_suggests_commands_that_work(workdir, capsys):
    code, _, err = run_cli(["train", "--data", "elsewhere/shakespeare", *QUICK_TRAIN], capsys)
    assert code == 1 and "the folder does not exist" in err
    named, own = suggested(err)
    run_suggested(named, capsys)  # tiny Shakespeare from NANOGPT_TINYSHAKESPEARE, into the folder named
    assert run_cli(["train", "--data", "elsewhere/shakespeare", "--out", "out/a", *QUICK_TRAIN], capsys)[0] == 0
    assert "YOUR_TEXT" in own  # a template: with a text in its place, it works too
    (workdir / "mine.txt").write_text(TEXT)
    run_suggested(own.replace("YOUR_TEXT", "mine.txt").replace("elsewhere/shakespeare", "elsewhere/mine"), capsys)


def test_a_wrong_copy_of_a_named_dataset_suggests_preparing_it_as_text(workdir, capsys):
    bad = workdir / "input.txt"
    bad.write_text(TEXT)
    code, _, err = run_cli(["prepare", "shakespeare_char", "--source", str(bad), "--out", "x", "--quiet"], capsys)
    assert code == 1 and "has sha256" in err
    (prepare,) = suggested(err)
    run_suggested(prepare, capsys, ["--quiet"])
    out = Path(shlex.split(prepare)[-1])
    assert not inside(out, workdir) and json.loads((out / "meta.json").read_text())["train_tokens"] > 0


def test_suggested_folders_are_new_and_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "project" / "data"))
    monkeypatch.chdir(tmp_path)
    books = tmp_path / "books"
    books.mkdir()
    assert datasets.prepared_folder_for(books) == tmp_path / "project" / "data" / "books"
    (tmp_path / "project" / "data" / "books").mkdir(parents=True)
    (tmp_path / "project" / "data" / "books" / "meta.json").write_text("{}")
    assert datasets.prepared_folder_for(books) == tmp_path / "project" / "data" / "books-2", "never over a dataset"
    project = tmp_path / "project"  # the data location is inside the source: the data goes beside it
    assert datasets.prepared_folder_for(project) == tmp_path / "project-prepared"
    assert datasets.run_folder_for(books) == Path("out/books")
    monkeypatch.chdir(books)  # working inside the data: the run goes beside it
    assert datasets.run_folder_for(books) == tmp_path / "out" / "books"
    assert datasets.command_line("nanogpt", "train", "--data", Path("my books")) == "nanogpt train --data 'my books'"
