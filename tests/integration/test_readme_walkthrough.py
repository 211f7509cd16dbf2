"""The README's walk-throughs, run as written against a fresh embedded stack.

Every ```sh block of README.md after the first (`make dev` / `make test`) runs, in order, in one bash session, so
a variable set in one block is there for the next. A block preceded by `<!-- readme-test: … -->` is treated as
that comment says:

    skip (why)                 not run (it needs something this machine does not have)
    id=NAME                    names the block
    after re-running NAME      an alternative to the block before it: block NAME runs again first

The expected answers are the ones the README shows to its reader:

    curl … -d '…'                                          # 202          (trailing: this command's HTTP status)
    curl …
    # 200 {"status": "verified", "user_id": "…", …}                       (a comment line under the command)
    # {"invoices": [{"number": 3, "status": "paid", …}], …}               (the JSON alone: any status)
    .venv/bin/prognet mail show -1 --subject Receipt   # "Thank you: …"   (a quoted text: what it prints)

The status and JSON are those of the last `curl` the command ran. An object matches when it has the keys shown
with matching values (other keys may be there), a list when each element shown matches one of its elements,
and `…` (or `...`) stands for anything: a whole value, the rest of an object, or part of a string. Prose may
follow the JSON on the same comment line.

The README talks to `make dev`'s fixed ports: the test rewrites `localhost:8000` (API) and `localhost:12111`
(Stripe sandbox) to the stack's, points `prognet` (PROGNET_DATA_DIR) and `temporal` (TEMPORAL_ADDRESS) at it,
runs `.venv/bin/…` from this interpreter's bin directory and keeps the `/tmp/…` files in a directory of its own.
A `sleep N` longer than 5 s is not slept: the next checked command that only reads is instead repeated until it
gives the README's answer, for at most N + 15 s; any command that only reads is repeated for up to 20 s before
it counts as failed (the README's short `sleep`s are enough on a quiet machine, not on a loaded CI runner).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prognet_dev import EmbeddedStack, stack_settings

README = Path(__file__).resolve().parents[2] / "README.md"
SERVICE_VARS = (
    "DATABASE_URL",
    "MIGRATION_DATABASE_URL",
    "PROGNET_DATA_DIR",
    "REDIS_URL",
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "SMTP_HOST",
    "SMTP_PORT",
    "STRIPE_API_BASE",
)
READ_RETRY_SECONDS = 20.0  # a read-only command is repeated this long before its answer counts as wrong
SHORT_SLEEP = 5  # a README `sleep` up to this many seconds is slept as written
STEP_TIMEOUT = 120.0
ANY = "…"
LOG_TAIL: deque[str] = deque(maxlen=300)


# --- reading the README ------------------------------------------------------------------------------------------


@dataclass
class Expectation:
    status: int | None = None
    body: Any = None
    has_body: bool = False
    text: str | None = None


@dataclass
class Step:
    code: str
    line: int  # README line of the step's last command line
    expect: Expectation | None = None
    wait: float = 0.0  # extra retry budget: the README slept this long before it


@dataclass
class Block:
    line: int  # README line of the opening fence
    directive: str
    steps: list[Step] = field(default_factory=list)

    @property
    def name(self) -> str | None:
        m = re.search(r"\bid=([\w-]+)", self.directive)
        return m.group(1) if m else None

    @property
    def rerun(self) -> str | None:
        m = re.search(r"\bafter re-running ([\w-]+)", self.directive)
        return m.group(1) if m else None


STATUS_LINE = re.compile(r"^#\s*(\d{3})\b(.*)$")
TRAILING_STATUS = re.compile(r"\s#\s*(\d{3})\b[^'\"]*$")
TRAILING_TEXT = re.compile(r"\s#\s*\"([^\"]+)\"\s*$")
SLEEP = re.compile(r"^sleep\s+(\d+)\s*(#.*)?$")


def readme_blocks(text: str) -> list[Block]:
    """The ```sh blocks after the first, with the `readme-test` directive of the line before each fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i, seen = 0, 0
    while i < len(lines):
        if lines[i].strip() != "```sh":
            i += 1
            continue
        start = i
        j = i + 1
        while lines[j].strip() != "```":
            j += 1
        seen += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        m = re.match(r"\s*<!--\s*readme-test:\s*(.*?)\s*-->", prev)
        directive = m.group(1) if m else ""
        if seen > 1 and not directive.startswith("skip"):
            blocks.append(Block(start + 1, directive, steps(lines[start + 1 : j], start + 2)))
        i = j + 1
    return blocks


def steps(body: list[str], first_line: int) -> list[Step]:
    """Cut a block into steps: each ends where the README shows an expected answer."""
    out: list[Step] = []
    code: list[str] = []
    wait = 0.0
    code_line = first_line
    i = 0
    while i < len(body):
        line, number = body[i], first_line + i
        stripped = line.strip()
        if stripped.startswith("#"):
            expect, consumed = _comment_expectation(body, i)
            if expect is not None and code:
                out.append(Step("\n".join(code), code_line, expect, wait))
                code, wait = [], 0.0
                i += consumed
                continue
            i += 1
            continue
        sleep = SLEEP.match(stripped)
        if sleep and int(sleep.group(1)) > SHORT_SLEEP:
            wait += int(sleep.group(1))
            i += 1
            continue
        code.append(line)
        code_line = number
        if stripped and not stripped.endswith("\\"):
            trailing = _trailing_expectation(stripped)
            if trailing is not None:
                out.append(Step("\n".join(code), code_line, trailing, wait))
                code, wait = [], 0.0
        i += 1
    if any(c.strip() for c in code):
        out.append(Step("\n".join(code), code_line, None, wait))
    return out


def _trailing_expectation(line: str) -> Expectation | None:
    if m := TRAILING_STATUS.search(line):
        return Expectation(status=int(m.group(1)))
    if m := TRAILING_TEXT.search(line):
        return Expectation(text=m.group(1))
    return None


def _comment_expectation(body: list[str], i: int) -> tuple[Expectation | None, int]:
    """An answer written as comment lines at body[i]: `# 202 {...}`, `# {...}` or `# [...]`, JSON possibly
    continued on the next comment lines. Returns it and the number of lines it took."""
    first = body[i].strip()
    status = None
    rest = first[1:].strip()
    if m := STATUS_LINE.match(first):
        status, rest = int(m.group(1)), m.group(2).strip()
    if not rest.startswith(("{", "[")):
        return (Expectation(status=status), 1) if status is not None else (None, 1)
    consumed = 1
    text = rest
    while _balanced_prefix(text) is None and i + consumed < len(body) and body[i + consumed].strip().startswith("#"):
        text += " " + body[i + consumed].strip()[1:].strip()
        consumed += 1
    json_text = _balanced_prefix(text)
    assert json_text is not None, f"README line {i}: unbalanced JSON in an expected answer: {text}"
    return Expectation(status=status, body=parse_pattern(json_text), has_body=True), consumed


def _balanced_prefix(text: str) -> str | None:
    """The leading `{…}` or `[…]` of text (brackets inside strings ignored), or None if it does not close."""
    depth, in_string, escape = 0, False, False
    for pos, ch in enumerate(text):
        if in_string:
            escape = ch == "\\" and not escape
            if ch == '"' and not escape:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[: pos + 1]
    return None


def parse_pattern(text: str) -> Any:
    """README JSON with `…` placeholders -> JSON in which the string "…" means anything."""
    parts = re.split(r'("(?:[^"\\]|\\.)*")', text)
    for k in range(0, len(parts), 2):  # outside string literals only
        s = parts[k].replace("...", ANY)
        s = re.sub(r"\{\s*…\s*\}|\[\s*…\s*\]", ANY, s)  # a whole object or list: anything
        s = re.sub(r",\s*…\s*(?=[}\]])", "", s)  # `, …}`: other members (always allowed)
        parts[k] = s.replace(ANY, '"…"')
    return json.loads("".join(parts))


def matches(pattern: Any, actual: Any) -> bool:
    if pattern == ANY:
        return True
    if isinstance(pattern, str) and ("…" in pattern or "..." in pattern):
        regex = ".*".join(re.escape(p) for p in re.split(r"…|\.\.\.", pattern))
        return isinstance(actual, str) and re.fullmatch(regex, actual, re.DOTALL) is not None
    if isinstance(pattern, dict):
        return isinstance(actual, dict) and all(k in actual and matches(v, actual[k]) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(actual, list) and all(any(matches(p, a) for a in actual) for p in pattern)
    return pattern == actual


def text_matches(pattern: str, output: str) -> bool:
    """`…` stands for anything, and a space for any whitespace (a shown text may span the output's lines)."""
    parts = re.split(r"…|\.\.\.", pattern)
    regex = ".*?".join(r"\s+".join(re.escape(w) for w in part.split(" ")) for part in parts)
    return re.search(regex, output, re.DOTALL) is not None


READ_ONLY_LINE = re.compile(
    r"^(curl -s (?!.*-X )(?!.* -d )[^|]*(\|\s*tee \S+)?"
    r"|\.venv/bin/prognet mail (list|show)\b.*"
    r"|\.venv/bin/prognet traces\b.*"
    r"|\.venv/bin/temporal workflow (list|query|describe)\b.*"
    r"|sleep \d+"
    r"|[A-Z_]+=\$\(python3 -c '[^']*'\))$"
)


def read_only(code: str) -> bool:
    """A step whose commands only read (a GET, mail, a Temporal query): safe to repeat."""
    lines = [ln.strip() for ln in code.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    joined: list[str] = []
    for ln in lines:  # join continuation lines
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + ln
        else:
            joined.append(ln)
    return bool(joined) and all(READ_ONLY_LINE.match(re.sub(r"\s+#.*$", "", ln)) for ln in joined)


# --- the stack and the shell ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def readme_stack() -> AsyncIterator[EmbeddedStack]:
    # Not under pytest's tmp dir: pytest makes it 0700, which locks out PostgreSQL's own system user.
    root = Path(tempfile.mkdtemp(prefix="prognet-readme-"))
    root.chmod(0o755)
    stack = EmbeddedStack(
        stack_settings(root / "data"), app=True, log=lambda name, line: LOG_TAIL.append(f"{name} | {line}")
    )
    try:
        await stack.start()
    except BaseException:
        print("\n".join(LOG_TAIL))
        raise
    yield stack
    await stack.stop()
    shutil.rmtree(root, ignore_errors=True)


ERR_MARK = "__README_COMMAND_FAILED"
CURL_WRAPPER = r"""
trap 'echo "__README_COMMAND_FAILED (exit $?): $BASH_COMMAND"' ERR
curl() {  # the real curl, with the status and body of its answer kept for the README test
  command curl -D "$__README_RUN/headers" "$@" | tee "$__README_RUN/body"
  return "${PIPESTATUS[0]}"
}
"""


class Shell:
    """One bash session; each step is sourced into it, so variables and functions carry over."""

    def __init__(self, proc: asyncio.subprocess.Process, run_dir: Path) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.count = 0

    async def run(self, code: str) -> str:
        self.count += 1
        script = self.run_dir / f"step-{self.count}.sh"
        script.write_text(code + "\n")
        for name in ("headers", "body"):
            (self.run_dir / name).unlink(missing_ok=True)
        sentinel = f"__README_STEP_DONE_{uuid.uuid4().hex}"
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f'source "{script}" </dev/null; echo; echo "{sentinel}"\n'.encode())
        await self.proc.stdin.drain()
        output: list[str] = []
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                raw = await self.proc.stdout.readline()
                assert raw, "the bash session ended:\n" + "".join(output)
                line = raw.decode(errors="replace")
                if line.startswith(sentinel):
                    return "".join(output)
                output.append(line)

    def answer(self) -> tuple[int | None, str]:
        """Status and body of the last curl."""
        headers = self.run_dir / "headers"
        body = self.run_dir / "body"
        statuses = re.findall(r"^HTTP/\S+ (\d{3})", headers.read_text() if headers.exists() else "", re.M)
        return (int(statuses[-1]) if statuses else None), (body.read_text() if body.exists() else "")


def rewrite(code: str, stack: EmbeddedStack, run_dir: Path) -> str:
    assert stack.api_url and stack.stripe_api_base
    code = code.replace("localhost:8000", stack.api_url.removeprefix("http://"))
    code = code.replace("localhost:12111", stack.stripe_api_base.removeprefix("http://").rstrip("/"))
    code = code.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    return re.sub(r"/tmp/", f"{run_dir}/", code)


def failure(expect: Expectation, output: str, status: int | None, body: str) -> str | None:
    """Why a step's answer is not the README's, or None."""
    if ERR_MARK in output:
        return "a command failed: " + output[output.index(ERR_MARK) :].splitlines()[0]
    if expect.status is not None and status != expect.status:
        return f"HTTP status {status}, the README shows {expect.status}"
    if expect.has_body:
        try:
            actual = json.loads(body)
        except ValueError:
            return f"the answer is not JSON: {body[:500]!r}"
        if not matches(expect.body, actual):
            got, shown = json.dumps(actual, ensure_ascii=False), json.dumps(expect.body, ensure_ascii=False)
            return f"the answer {got[:2000]} does not match the README's {shown}"
    if expect.text is not None and not text_matches(expect.text, output):
        return f"the output does not contain {expect.text!r}"
    return None


# The alerting walk-through waits for the evaluator's next minute and a 30 s escalation (about 2 minutes of it)
@pytest.mark.timeout(720)
async def test_readme_walkthrough(readme_stack: EmbeddedStack):
    stack = readme_stack
    blocks = readme_blocks(README.read_text())
    assert blocks, "no walk-through blocks found in README.md"
    by_name = {b.name: b for b in blocks if b.name}
    run_dir = Path(tempfile.mkdtemp(prefix="prognet-readme-run-"))
    env = {k: v for k, v in os.environ.items() if k.upper() not in SERVICE_VARS}
    assert stack.temporal_address
    env |= {
        "PROGNET_DATA_DIR": str(stack.data_dir),
        "TEMPORAL_ADDRESS": stack.temporal_address,
        "TEMPORAL_NAMESPACE": stack.temporal_namespace,
        "REDIS_PORT": str(stack.redis.port if stack.redis else ""),  # `make dev`'s Redis is on the default port
        "__README_RUN": str(run_dir),
    }
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "--noprofile",
        "--norc",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=README.parent,
    )
    shell = Shell(proc, run_dir)
    transcript: list[str] = []
    try:
        await shell.run(CURL_WRAPPER)
        for block in blocks:
            plan = [block]
            if block.rerun:
                assert block.rerun in by_name, f"README line {block.line}: no block named {block.rerun}"
                plan = [by_name[block.rerun], block]
            for b in plan:
                for step in b.steps:
                    await run_step(shell, step, stack, run_dir, transcript)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


async def run_step(shell: Shell, step: Step, stack: EmbeddedStack, run_dir: Path, transcript: list[str]) -> None:
    code = rewrite(step.code, stack, run_dir)
    repeatable = read_only(step.code)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (step.wait + 15 if step.wait else READ_RETRY_SECONDS)
    while True:
        try:
            output = await shell.run(code)
        except TimeoutError:
            pytest.fail(
                f"README line {step.line}: no answer within {STEP_TIMEOUT:.0f} s\n\n--- the step ---\n{step.code}"
                f"\n\n--- stack log (tail) ---\n" + "\n".join(list(LOG_TAIL)[-40:]),
                pytrace=False,
            )
        transcript.append(f"$ {step.code}\n{output}")
        status, body = shell.answer()
        why = failure(step.expect or Expectation(), output, status, body)
        if why is None:
            return
        if not repeatable or loop.time() > deadline:
            recent = "\n".join(transcript[-6:])
            pytest.fail(
                f"README line {step.line}: {why}\n\n--- the step ---\n{step.code}\n\n--- recent output ---\n{recent}"
                f"\n\n--- stack log (tail) ---\n" + "\n".join(list(LOG_TAIL)[-60:]),
                pytrace=False,
            )
        await asyncio.sleep(1.0)


# --- the reading itself (no stack) ---------------------------------------------------------------------------------

WALKTHROUGH_SECTIONS = (
    "## Walk-through with curl",
    "### Create an organisation, invite a colleague",
    "### Subscribe, get a paid invoice, watch a declined card go through dunning",
    "### Paid sign-up in one call",
    "### The operator's desk: a dead letter and a parked saga",
    "### Clean up",
)


def test_every_walkthrough_section_runs_and_shows_answers():
    text = README.read_text()
    lines = text.splitlines()
    headings = {b.line: next(ln for ln in reversed(lines[: b.line]) if ln.startswith("#")) for b in readme_blocks(text)}
    by_section: dict[str, list[Block]] = {}
    for block in readme_blocks(text):
        by_section.setdefault(headings[block.line], []).append(block)
    for section in WALKTHROUGH_SECTIONS:
        blocks = by_section.get(section, [])
        assert any(s.expect for b in blocks for s in b.steps), f"README section {section!r} has no checked answer"
    for block in readme_blocks(text):  # a quoted text after a command is an answer the test must be able to read
        for step in block.steps:
            for line in step.code.splitlines():
                comment = re.search(r"\s#\s(.*)$", line)
                if comment and '"' in comment.group(1):
                    assert _trailing_expectation(line.strip()), f"README: an answer the test cannot read: {line}"
    skipped = re.findall(r"<!--\s*readme-test:\s*skip\b(.*?)-->", text)
    assert all(reason.strip().startswith("(") for reason in skipped), "a skipped block must say why"
    assert len(skipped) <= 1, "only the external-services block cannot run here"


def test_answers_are_read_as_shown():
    step = steps(
        ['curl -s -X POST localhost:8000/v1/x -d "{}"', '# 202 {"id": "…", "links": {…},', '#   "n": 1, …}'], 1
    )
    assert len(step) == 1 and step[0].expect == Expectation(202, {"id": ANY, "links": ANY, "n": 1}, True)
    assert steps(["curl -s -o /dev/null localhost:8000/v1/me   # 401: that session is gone"], 1)[0].expect == (
        Expectation(status=401)
    )
    assert steps(['prognet mail show -1   # "Thank you: …"'], 1)[0].expect == Expectation(text="Thank you: …")
    assert steps(["curl -s localhost:8000/v1/plans   # starter-monthly, team-monthly"], 1)[0].expect is None
    slept = steps(["sleep 60   # the Schedule fires", "curl -s localhost:8000/v1/x", '# [{"number": 2}]'], 1)
    assert len(slept) == 1 and slept[0].wait == 60 and "sleep" not in slept[0].code


def test_a_changed_answer_does_not_match():
    shown = parse_pattern('{"status": "verified", "user_id": "…", "workflow_id": "registration-…", "links": {…}, …}')
    answer = {"status": "verified", "user_id": "u1", "workflow_id": "registration-u1", "links": {}, "extra": 1}
    assert matches(shown, answer)
    assert not matches(shown, answer | {"status": "pending"})
    assert not matches(shown, {k: v for k, v in answer.items() if k != "user_id"})
    assert not matches(shown, answer | {"workflow_id": "tenant-u1"})
    invoices = parse_pattern('[{"number": 2, "status": "paid", …}, {"number": 1, "status": "paid", …}]')
    assert matches(invoices, [{"number": 2, "status": "paid"}, {"number": 1, "status": "paid"}])
    assert not matches(invoices, [{"number": 1, "status": "paid"}])
    assert matches(parse_pattern('{"type": ".../payment-declined"}'), {"type": "https://x/payment-declined"})
    assert text_matches(
        "Thank you: we received 1.00 EUR for invoice 1 …",
        "Hello, Thank you: we received 1.00 EUR for invoice 1 of May.",
    )
    assert not text_matches("Thank you: we received 1.00 EUR", "we received 2.00 EUR")
    receipt = "To: billing@x.example\nSubject: Receipt\n\nThank you: we received 1.00 EUR for invoice 1."
    assert text_matches("To: billing@x.example … Thank you: we received 1.00 EUR …", receipt)
    assert not text_matches("To: owner@x.example … Thank you: …", receipt)
    assert read_only('sleep 3\ncurl -s "localhost:8000/v1/admin/emails" -H "A: b" \\\n     | tee /tmp/dead.json')
    assert not read_only("curl -s -X POST localhost:8000/v1/auth/verify -d '{}'")
