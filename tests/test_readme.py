"""The commands of the README and of docs/*.md, as a new user runs them: the quick start, the Python
snippets from another folder after `pip install -e .`, and every `python -m train ...` line against the
real parsers."""

import importlib.metadata
import os
import re
import shlex
import site
import subprocess
import sys
from pathlib import Path

import pytest

from train import evaluate
from train.config import parse_args

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text() for page in PAGES)
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOCS, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash"]

# Python blocks that are not self-contained programs, each with the reason; every other block runs.
NOT_RUN = {
    "metrics.bits_per_dim(nll_nats": "a reference card of calls; names like nll_nats stand for your values",
    'Client("http://127.0.0.1:7860")': "needs a running app (tests/demo/test_app_client.py drives it)",
}


def test_quick_start_is_the_two_commands_and_ci_runs_both():
    first = re.findall(r"```bash\n(.*?)```", README, flags=re.S)[0].strip().splitlines()
    assert first == ["pip install -e . && python app.py", 'pip install -e ".[dev]" && python -m pytest -q']
    ci = (REPO / ".ci" / "run").read_text()
    extract = next(line for line in ci.splitlines() if line.startswith("mapfile -t COMMANDS"))
    show = extract + '; printf "%s\\n" "${COMMANDS[@]}"'
    r = subprocess.run(["bash", "-c", show], cwd=REPO, capture_output=True, text=True, check=True)
    assert r.stdout.splitlines() == first
    assert 'bash -c "${COMMANDS[0]}"' in ci and 'bash -c "${COMMANDS[1]}"' in ci


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, spaces to hyphens)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_docs_link_to_pages_anchors_and_images_that_exist():
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#:]*)(?:#([^)]*))?\)", page.read_text()):
            path = (page.parent / target) if target else page
            assert path.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor:
                assert anchor in _anchors(path), f"{page.name} links to {target}#{anchor}: no such heading"


def test_the_codes_citations_of_the_docs_resolve():
    """Code cites the manual as docs/<page>.md#<anchor>: each page and heading must exist."""
    for source in REPO.glob("[!.]*/**/*.py"):
        for page, anchor in re.findall(r"docs/(\w+\.md)#([\w-]+)", source.read_text()):
            where = f"{source.relative_to(REPO)} cites docs/{page}#{anchor}"
            assert anchor in _anchors(REPO / "docs" / page), where


def test_no_reference_to_a_document_outside_the_repository():
    """Code and docs cite docs/*.md, never a design file users cannot see."""
    tracked = [*REPO.glob("[!.]*/**/*.py"), *REPO.glob("*.py"), *PAGES, REPO / "BENCHMARKS.md"]
    cited = "DESIGN"  # the name alone, so this file does not cite it
    for source in [*tracked, REPO / "bench" / "README.md"]:
        text = source.read_text()
        assert f"{cited} §" not in text and f"{cited}.md" not in text, source.relative_to(REPO)


def test_the_reasons_for_not_running_a_block_are_still_true():
    for marker in NOT_RUN:
        assert sum(marker in code for code in PYTHON) == 1, marker


def _commands(prefix: str) -> list[list[str]]:
    """Every `python -m <prefix> ...` command of the bash blocks, continuation lines joined, shell
    variables of the loops set to 1, comments dropped."""
    found = []
    for block in BASH:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].replace("$b", "1").replace("$B", "1")
            m = re.search(rf"-m {re.escape(prefix)}(\s.*|$)", line)
            if m and not line.lstrip().startswith("#"):
                found.append(shlex.split(m.group(1).split("&&")[0].split(";")[0]))
    return found


def test_every_train_command_in_the_readme_parses():
    commands = _commands("train")
    assert len(commands) >= 6
    for words in commands:
        if words[:1] == ["--help"]:
            continue
        parse_args(words)  # raises SystemExit on a flag that does not exist or a bad value


def test_every_evaluate_command_in_the_readme_parses():
    commands = _commands("train.evaluate")
    assert len(commands) >= 3
    for words in commands:
        evaluate.parse_args(words)


def test_every_curves_command_in_the_readme_draws_the_bundled_runs(tmp_path, monkeypatch, capsys):
    from train import curves

    commands = _commands("train.curves")
    assert len(commands) >= 1
    monkeypatch.chdir(REPO)
    for words in commands:
        at = words.index("--out")
        runs = [str(p) for w in words[:at] for p in sorted(REPO.glob(w))]  # the shell's glob
        assert runs and curves.main([*runs, "--out", str(tmp_path / "curves.png")]) == 0


def _site_dirs() -> list[str]:
    """The site-packages folders of the environment running the tests, in import order."""
    dirs = set(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.add(site.getusersitepackages())
    return [p for p in sys.path if p in dirs]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A virtual environment with this project installed by `pip install -e .` (no dependencies fetched,
    no network, no build isolation), that sees the packages of the environment running the tests.

    `venv --system-site-packages` would not do: made from a venv's python, it sees the *base*
    interpreter's packages (venvs do not chain), whose setuptools may be older than the one
    pyproject.toml needs. A .pth file lists this environment's site-packages instead; it sorts after
    the project's own editable-install .pth, and plain path lines do not run the other .pth files, so
    an editable install of another copy of the project there stays out."""
    setuptools_version = importlib.metadata.version("setuptools")
    assert int(setuptools_version.split(".")[0]) >= 77, (
        f"setuptools {setuptools_version} cannot build this project (pyproject.toml needs >= 77): "
        'pip install -e ".[dev]" installs it'
    )
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    where = [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    purelib = subprocess.run(where, capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "zz_tested_environment.pth").write_text("\n".join(_site_dirs()) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    install = [*pip, "--no-build-isolation", "-e", str(REPO)]
    r = subprocess.run(install, capture_output=True, text=True, timeout=300)
    if r.returncode and "no such option: --python" in r.stderr:
        pytest.skip("pip older than 22.3 cannot install into another environment")
    assert r.returncode == 0, r.stderr
    imported = _run(python, ["-c", "import vae_triton; print(vae_triton.__file__)"], cwd=venv)
    assert imported.stdout.startswith(str(REPO)), (imported.stdout, imported.stderr)
    return python


def _run(python, args, cwd, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VAE_TRITON_BACKEND": "torch", "PYTHONPATH": ""}
    env.pop("TRITON_INTERPRET", None)  # a user's shell: the CPU runs the torch path
    command = [str(python), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_snippets_run_from_another_folder(installed, tmp_path, index):
    code = PYTHON[index]
    if any(marker in code for marker in NOT_RUN):
        pytest.skip(next(reason for marker, reason in NOT_RUN.items() if marker in code))
    r = _run(installed, ["-c", code], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]


def test_the_clis_run_from_another_folder(installed, tmp_path):
    clis = (("train", "--kl-warmup-steps"), ("train.evaluate", "--iw-samples"), ("demo", "--hub-repo"))
    for module, flag in clis:
        r = _run(installed, ["-m", module, "--help"], cwd=tmp_path)
        assert r.returncode == 0 and flag in r.stdout, r.stderr


def test_the_browser_test_prerequisite_is_documented_and_its_absence_skips():
    assert "apt-get install -y chromium" in DOCS
    browser_test = (REPO / "tests" / "demo" / "test_app_browser.py").read_text()
    assert 'shutil.which("chromium")' in browser_test and "skipif(CHROMIUM is None" in browser_test
