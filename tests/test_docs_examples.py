"""Every ```python block of the docs runs as written, each as its own program, on real Redis.

Why: an example that is only read rots. Each block of every file in ``DOC_FILES`` runs in a
subprocess (``sys.executable``, cwd a fresh temp dir, at most ``BLOCK_TIMEOUT_S``) with
``REDIS_URL`` set to the private test server, flushed first, and must exit 0. Test ids are
``<file>:<line of the opening fence>``, and tracebacks carry the markdown's own line numbers.
The only opt-out is a first line ``# docs: not-run (reason)``, with a reason; nothing else skips.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = ("README.md", "docs/**/*.md")  # globs under ROOT; every match is checked
PYTHON_INFO = frozenset({"python", "python3", "py"})  # fence info words that mean "run me"
BLOCK_TIMEOUT_S = 120
NOT_RUN_PREFIX_RE = re.compile(r"#\s*docs\s*:")
NOT_RUN_RE = re.compile(r"#\s*docs:\s*not-run\s*\((?P<reason>.*)\)\s*")
FENCE_OPEN_RE = re.compile(r"\s*(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)")
FENCE_CLOSE_RE = re.compile(r"\s*(?P<fence>`{3,}|~{3,})\s*")


@dataclass(frozen=True)
class Block:
    """One fenced python block: ``line`` is the 1-based line of its opening fence."""

    label: str
    line: int
    code: str

    @property
    def id(self) -> str:
        return f"{self.label}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """The existing markdown files named by ``DOC_FILES``, sorted, each once."""
    return sorted({path for pattern in DOC_FILES for path in root.glob(pattern) if path.is_file()})


def extract_blocks(path: Path, label: str) -> list[Block]:
    """Every python fenced block of a markdown file (CommonMark fences: ``` or ~~~, 3 or more;
    a fence closes only on the same character at least as long; an unclosed one runs to EOF)."""
    blocks: list[Block] = []
    fence = ""  # the open fence, "" outside any block
    start, indent, is_python = 0, 0, False
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not fence:
            opened = FENCE_OPEN_RE.fullmatch(line)
            if opened:
                fence, start, body = opened["fence"], number, []
                indent = len(line) - len(line.lstrip(" "))
                info = opened["info"].split()
                is_python = bool(info) and info[0] in PYTHON_INFO
            continue
        closed = FENCE_CLOSE_RE.fullmatch(line)
        if closed and closed["fence"][0] == fence[0] and len(closed["fence"]) >= len(fence):
            if is_python:
                blocks.append(Block(label, start, "\n".join(body) + "\n"))
            fence = ""
        else:
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
    if fence and is_python:
        blocks.append(Block(label, start, "\n".join(body) + "\n"))
    return blocks


def not_run_reason(block: Block) -> str | None:
    """The reason of a ``# docs: not-run (reason)`` first line, else None; fails when malformed."""
    first = block.code.split("\n", 1)[0].strip()
    if not NOT_RUN_PREFIX_RE.match(first):
        return None
    marker = NOT_RUN_RE.fullmatch(first)
    reason = marker["reason"].strip() if marker else ""
    assert reason, f"{block.id}: an opt-out needs a reason: `# docs: not-run (reason)`: {first!r}"
    return reason


def run_block(
    block: Block, cwd: Path, env: dict[str, str], timeout_s: float = BLOCK_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run the block as a program file in ``cwd`` (padded so its line numbers are the doc's)."""
    program = cwd / f"{block.label.replace('/', '_')}-L{block.line}.py"
    program.write_text("\n" * block.line + block.code, encoding="utf-8")
    try:
        return subprocess.run(
            [sys.executable, str(program)],
            cwd=cwd,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(
            f"{block.id}: still running after {timeout_s} s\n"
            + describe(error.stdout, error.stderr)
        ) from None


def describe(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    """A failed block's output (TimeoutExpired may hold bytes even with ``text=True``)."""

    def text(output: str | bytes | None) -> str:
        return output.decode(errors="replace") if isinstance(output, bytes) else output or ""

    return f"--- stdout ---\n{text(stdout)}--- stderr ---\n{text(stderr)}"


BLOCKS = [
    block
    for path in doc_files()
    for block in extract_blocks(path, path.relative_to(ROOT).as_posix())
]


# -- the docs -------------------------------------------------------------------------------------


def test_readme_has_python_blocks() -> None:
    """Guards the extractor: zero blocks would turn the test below into a silent skip."""
    assert any(block.label == "README.md" for block in BLOCKS)


@pytest.mark.real
@pytest.mark.usefixtures("real_redis")  # FLUSHALL before the block runs
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
async def test_docs_python_block_runs(block: Block, redis_server_url: str, tmp_path: Path) -> None:
    reason = not_run_reason(block)
    if reason is not None:
        pytest.skip(f"{block.id}: docs: not-run ({reason})")
    done = await asyncio.to_thread(run_block, block, tmp_path, {"REDIS_URL": redis_server_url})
    status = done.returncode
    assert status == 0, f"{block.id} exited {status}\n" + describe(done.stdout, done.stderr)


# -- the runner itself, on a markdown file of its own --------------------------------------------

SAMPLE_MD = """\
# Sample

```python
import os
print("ok", os.environ["REDIS_URL"])
```

Not python: ```python inline``` and

```text
raise SystemExit(3)
```

````markdown
```python
raise SystemExit(4)
```
````

1. In a list:

   ~~~py
   x = 1

   raise SystemExit(x)
   ~~~

```python
# docs: not-run (needs a provider API key)
raise SystemExit(5)
```

```python
# docs: not-run
```
"""


@pytest.fixture
def sample_blocks(tmp_path: Path) -> list[Block]:
    path = tmp_path / "sample.md"
    path.write_text(SAMPLE_MD, encoding="utf-8")
    return extract_blocks(path, "sample.md")


def test_extract_blocks_finds_python_fences_only(sample_blocks: list[Block]) -> None:
    assert [block.id for block in sample_blocks] == [
        "sample.md:3",
        "sample.md:22",
        "sample.md:28",
        "sample.md:33",
    ]
    assert sample_blocks[1].code == "x = 1\n\nraise SystemExit(x)\n"  # list indent removed


def test_run_block_reports_exit_status_and_doc_lines(
    sample_blocks: list[Block], tmp_path: Path
) -> None:
    env = {"REDIS_URL": "redis://example.invalid:1/0"}
    ok, fails, _, _ = sample_blocks
    done = run_block(ok, tmp_path, env)
    assert (done.returncode, done.stdout) == (0, "ok redis://example.invalid:1/0\n")
    done = run_block(fails, tmp_path, env)
    assert done.returncode == 1

    crash = Block("sample.md", 40, "x = 1\nraise ValueError(x)\n")
    done = run_block(crash, tmp_path, env)
    assert done.returncode == 1 and "line 42" in done.stderr  # the markdown's own line number


def test_run_block_times_out_with_its_output(tmp_path: Path) -> None:
    slow = Block("sample.md", 1, "print('started', flush=True)\nimport time\ntime.sleep(60)\n")
    with pytest.raises(AssertionError, match=r"(?s)sample.md:1: still running.*started"):
        run_block(slow, tmp_path, {}, timeout_s=2)


def test_not_run_marker_needs_a_reason(sample_blocks: list[Block]) -> None:
    ok, _, opted_out, no_reason = sample_blocks
    assert not_run_reason(ok) is None
    assert not_run_reason(opted_out) == "needs a provider API key"
    with pytest.raises(AssertionError, match="needs a reason"):
        not_run_reason(no_reason)
    with pytest.raises(AssertionError):
        not_run_reason(Block("sample.md", 1, "# docs: not-run ()\n"))
