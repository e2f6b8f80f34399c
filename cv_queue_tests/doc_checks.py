"""Checks of the documentation (README.md and docs/*.md) against the repository, in pure Python.

`problems(path, text)` lists what a page shows that does not exist:
- a relative link or image whose file is missing, or whose `#anchor` is no heading of the target page (GitHub's
  slugs: lower case, punctuation other than `-` and `_` dropped, spaces to `-`, `-1`, `-2` ... for repeats);
- a `make X` (in a code block or inline code) whose X is no target of the Makefile;
- a `cv-queue ...` command whose subcommand or `--flag` the real argparse parser (cv_queue/cli/main.py) does not
  have, or whose value is not among a flag's choices;
- a `CVQ_...` / `KAFKA_...` environment variable that is no setting of the generated configuration reference (a
  `*` pattern must match one), apart from the few listed below with the file that reads them;
- a repository path (`cv_queue/...`, `cv_queue_tests/...`, `deploy/...`, `docs/...`) or a dotted name
  (`cv_queue.kafka.client.auth.check_access`, `cv_queue.evaluation.llm:LLMEvaluator`) in code that does not resolve.

`python -m cv_queue_tests.doc_checks --acl-table docs/06-security.md` rewrites the ACL table between the page's
acl-table markers (`make docs` runs it).
"""

import argparse
import fnmatch
import re
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
SECURITY_PAGE = DOCS / "06-security.md"
CONFIG_PAGE = DOCS / "09-configuration.md"


def doc_files() -> list[Path]:
    """The README and the numbered pages, in reading order."""
    return [README, *sorted(DOCS.glob("*.md"))]


# --- markdown ----------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")


def split_code(text: str) -> tuple[str, list[str]]:
    """The prose (fenced code blocks blanked, so line numbers stay) and the fenced code blocks' contents."""
    prose, blocks, block = [], [], None
    for line in text.split("\n"):
        if _FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append("\n".join(block))
                block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    if block is not None:
        blocks.append("\n".join(block))
    return "\n".join(prose), blocks


def inline_code(prose: str) -> list[str]:
    """Inline code spans, paragraph by paragraph (a span may wrap onto the next line), newlines made spaces."""
    spans = []
    for paragraph in re.split(r"\n\s*\n", prose):
        spans += [" ".join(span.split()) for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", paragraph)]
    return spans


_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(prose: str) -> list[str]:
    """Targets of the inline links and images of the prose."""
    return [m.group(2) for m in _LINK.finditer(prose)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = _LINK.sub(lambda m: m.group(1), heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, repeats numbered as GitHub numbers them."""
    prose, _ = split_code(text)
    seen: dict[str, int] = {}
    out = set()
    for line in prose.split("\n"):
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def code_lines(text: str, comments: bool = False) -> list[str]:
    """Every line of every code block and every inline code span: the commands a reader may type (shell comments
    cut off unless `comments`)."""
    prose, blocks = split_code(text)
    lines = []
    for block in blocks:
        for line in block.split("\n"):
            lines.append(line if comments else re.split(r"(?:^|\s)#", line, maxsplit=1)[0])
    return lines + inline_code(prose)


# --- links -------------------------------------------------------------------------------------------------------

def link_problems(path: Path, text: str) -> list[str]:
    prose, _ = split_code(text)
    out = []
    for target in links(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        if not file_part:  # an anchor of this page
            if anchor not in anchors(text):
                out.append(f"{path.name}: link {target!r}: {path.name} has no heading #{anchor}")
            continue
        dest = (path.parent / file_part).resolve()
        if PROJECT_ROOT not in (dest, *dest.parents):
            out.append(f"{path.name}: link {target!r} leaves the repository")
            continue
        if not dest.exists():
            out.append(f"{path.name}: link {target!r}: no such file {_rel(dest)}")
            continue
        if anchor:
            if dest.suffix != ".md":
                out.append(f"{path.name}: link {target!r}: an anchor into a file that is not markdown")
            elif anchor not in anchors(dest.read_text()):
                out.append(f"{path.name}: link {target!r}: {_rel(dest)} has no heading #{anchor}")
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


# --- make --------------------------------------------------------------------------------------------------------

def makefile_targets(makefile: str) -> set[str]:
    targets = set()
    for line in makefile.split("\n"):
        m = re.match(r"^([A-Za-z0-9_.\-/ ]+?)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(t for t in m.group(1).split() if not t.startswith("."))
    return targets


_STOP = {"&&", "||", ";", "|", "&", "...", ">", "<"}


def make_targets_shown(lines: Iterable[str]) -> Iterator[str]:
    """The targets of every `make ...` in these lines (variable assignments skipped)."""
    for line in lines:
        tokens = line.split()
        for i, token in enumerate(tokens):
            if token != "make" or (i and tokens[i - 1] not in _STOP and "=" not in tokens[i - 1]):
                continue
            for raw in tokens[i + 1:]:
                arg = raw.strip("`'\"")
                if arg in _STOP or arg.startswith(("#", "$")):
                    break
                if "=" in arg or arg.startswith("-"):
                    continue
                target = arg.rstrip(".,;:)'")
                if target:
                    yield target
                if target != arg:  # punctuation ends the command
                    break


def make_problems(path: Path, text: str, targets: set[str]) -> list[str]:
    return [f"{path.name}: `make {t}`: no such Makefile target" for t in make_targets_shown(code_lines(text))
            if t not in targets]


# --- cv-queue ----------------------------------------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _name(parser: argparse.ArgumentParser) -> str:
    """`cv-queue dlq replay` for the parser of that subcommand."""
    return " ".join(["cv-queue", *parser.prog.split()[1:]])


def _is_placeholder(value: str) -> bool:
    """N, NAME, S, <x>, ..., $VAR: a value the reader fills in."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*|<.*>|\.\.\.|.*\$.*", value))


_OPEN, _CLOSE = "([", "]),;."


def cli_commands(lines: Iterable[str]) -> Iterator[list[str]]:
    """The tokens after each `cv-queue` that starts a command (not a namespace, a label or a file name), up to the
    end of the command (`&&`, `;`, a comment, punctuation after a token)."""
    for line in lines:
        tokens = line.split()
        i = 0
        while i < len(tokens):
            token = tokens[i].lstrip(_OPEN).rstrip(")")
            previous = tokens[i - 1] if i else ""
            if not (token == "cv-queue" or token.endswith("/cv-queue")) or previous in ("-n", "--namespace",
                                                                                       "namespace"):
                i += 1
                continue
            command = []
            i += 1
            while i < len(tokens) and tokens[i] not in ("&&", "||", ";", "&") and not tokens[i].startswith("#"):
                raw = tokens[i]
                command.append(raw)
                i += 1
                if raw.rstrip(_CLOSE) != raw and not raw.endswith(("]", "...")):
                    break  # "cv-queue enqueue)," ends with the sentence
            yield command


def cli_problems(command: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What in one `cv-queue` command (its tokens after `cv-queue`) the parser does not have. A synopsis may show
    [optional] parts and alternatives with `|`: `broker fetch | start [--nodes 1|3] | stop`."""
    shown = "cv-queue " + " ".join(command)
    out = []
    stack = [parser]
    tokens = [t.strip("[]").rstrip(",;).").strip("`") for t in command]
    tokens = [t for t in tokens if t]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        current = stack[-1]
        if token == "|":
            if len(stack) > 2:
                stack.pop()  # an alternative sub-subcommand: `fleet layout | relayout`
            continue
        if token.startswith("-"):
            flag, has_value, value = token.partition("=")
            action = current._option_string_actions.get(flag)
            if action is None:
                out.append(f"`{shown}`: `{_name(current)}` has no flag {flag}")
                continue
            if action.nargs == 0:
                continue
            if not has_value and i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "|":
                value = tokens[i]
                i += 1
            if action.choices is not None and value and not _is_placeholder(value):
                for one in value.split("|"):
                    if one not in {str(c) for c in action.choices}:
                        out.append(f"`{shown}`: {flag} {one}: not one of {sorted(map(str, action.choices))}")
            continue
        subcommands = _subcommands(current)
        if subcommands:
            if token in subcommands:
                stack.append(subcommands[token])
            elif not _is_placeholder(token):
                out.append(f"`{shown}`: `{_name(current)}` has no subcommand {token!r} (it has "
                           f"{', '.join(subcommands)})")
                break
        # else: a positional value (a topic name, a file)
    return out


@cache
def cli_parser() -> argparse.ArgumentParser:
    from cv_queue.cli.main import build_parser

    return build_parser()


def command_problems(path: Path, text: str, parser: argparse.ArgumentParser) -> list[str]:
    return [f"{path.name}: {p}" for command in cli_commands(code_lines(text)) for p in cli_problems(command, parser)]


# --- environment variables ---------------------------------------------------------------------------------------

# Variables the docs name that are no field of the settings models, each with the file that reads it: the check
# fails when that file no longer names it.
READ_ELSEWHERE = {
    # The per-run logins of Dagster's worker and replay runs (docs/06-security.md, "Security in Dagster").
    "KAFKA_WORKER_SASL_USERNAME": "cv_queue/defs/resources.py",
    "KAFKA_WORKER_SASL_PASSWORD": "cv_queue/defs/resources.py",
    "KAFKA_REPLAYER_SASL_USERNAME": "cv_queue/defs/resources.py",
    "KAFKA_REPLAYER_SASL_PASSWORD": "cv_queue/defs/resources.py",
    # The production instance's run launcher choice (docs/07-deployment.md).
    "CVQ_RUN_LAUNCHER": "cv_queue/deploy/run_launcher.py",
}
# Shell variables of the Kubernetes example (`--from-literal=KAFKA_SASL_PASSWORD="$CVQ_ADMIN_PASSWORD"`): the
# passwords the reader holds, named like settings but never read by cv-queue.
EXAMPLE_ONLY = {"CVQ_ADMIN_PASSWORD", "CVQ_WORKER_PASSWORD", "CVQ_REPLAYER_PASSWORD"}

_ENV = re.compile(r"(?<![A-Za-z0-9_])(?:CVQ|KAFKA)_[A-Z0-9_*]*")


@cache
def settings_variables() -> frozenset[str]:
    """The environment variables of the generated configuration reference."""
    from cv_queue.cli.config_cmd import sections

    return frozenset(env for section in sections() for env, _, _ in section.rows)


def env_problems(path: Path, text: str, known: Iterable[str]) -> list[str]:
    known = set(known) | READ_ELSEWHERE.keys()
    out = []
    for name in sorted(set(_ENV.findall(text))):
        if name in known or name in EXAMPLE_ONLY:
            continue
        if "*" in name or name.endswith("_"):  # a pattern (`CVQ_LLM__BUDGET__*`) or a prefix (`CVQ_`)
            pattern = name if "*" in name else name + "*"
            if any(fnmatch.fnmatchcase(k, pattern) for k in known):
                continue
            out.append(f"{path.name}: {name}: matches no setting")
        else:
            out.append(f"{path.name}: {name}: no such setting (see `cv-queue config`)")
    return out


def read_elsewhere_problems() -> list[str]:
    return [f"{name} is no longer read in {file}" for name, file in READ_ELSEWHERE.items()
            if name not in (PROJECT_ROOT / file).read_text()]


# --- repository paths and dotted names in code -------------------------------------------------------------------

_PATH = re.compile(r"^(?:cv_queue|cv_queue_tests|deploy|docs)/[\w./-]*$")
_DOTTED = re.compile(r"^(cv_queue(?:_tests)?(?:\.\w+)+)(?::(\w+))?$")
# Dotted names shown as text, not importable: each with the file that writes it.
NAMED_ELSEWHERE = {
    # The error class a timed-out job is dead-lettered with.
    "cv_queue.JobTimeout": "cv_queue/kafka/worker/execution.py",
}


def _code_tokens(text: str) -> Iterator[str]:
    for line in code_lines(text, comments=True):
        for raw in re.split(r"[\s()\[\],;'\"=`]+", line):
            token = raw.rstrip(".:")
            if token:
                yield token


def _resolve_dotted(name: str, attr: str | None) -> str | None:
    """None when `name` (`package.module.attr...`) names a module of the repository and, past it, a name that its
    source defines or imports; else what is wrong."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        base = PROJECT_ROOT.joinpath(*parts[:n])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if source.is_file():
            rest = parts[n:] + ([attr] if attr else [])
            if rest and not re.search(rf"\b{re.escape(rest[0])}\b", source.read_text()):
                return f"{_rel(source)} has no {rest[0]}"
            return None
    return "no such module"


def path_problems(path: Path, text: str) -> list[str]:
    out = []
    for token in sorted(set(_code_tokens(text))):
        if _PATH.match(token) and not (PROJECT_ROOT / token).exists():
            out.append(f"{path.name}: {token}: no such file in the repository")
        m = _DOTTED.match(token)
        if m:
            if token in NAMED_ELSEWHERE:
                if token not in (PROJECT_ROOT / NAMED_ELSEWHERE[token]).read_text():
                    out.append(f"{path.name}: {token}: no longer in {NAMED_ELSEWHERE[token]}")
                continue
            wrong = _resolve_dotted(m.group(1), m.group(2))
            if wrong:
                out.append(f"{path.name}: {token}: {wrong}")
    return out


# --- all ---------------------------------------------------------------------------------------------------------

def problems(path: Path, text: str, *, targets: set[str] | None = None,
             parser: argparse.ArgumentParser | None = None, known_env: Iterable[str] | None = None) -> list[str]:
    """Everything `text` (the page at `path`) shows that the repository does not have."""
    targets = makefile_targets((PROJECT_ROOT / "Makefile").read_text()) if targets is None else targets
    return (link_problems(path, text) + make_problems(path, text, targets)
            + command_problems(path, text, parser or cli_parser())
            + env_problems(path, text, settings_variables() if known_env is None else known_env)
            + path_problems(path, text))


# --- the generated ACL table -------------------------------------------------------------------------------------

ACL_START, ACL_END = "<!-- acl-table:start -->\n", "\n<!-- acl-table:end -->"


def embedded_acl_table(text: str) -> str:
    if ACL_START not in text or ACL_END not in text:
        raise ValueError("no acl-table markers")
    return text.split(ACL_START, 1)[1].split(ACL_END, 1)[0]


def acl_table() -> str:
    """The principal/ACL table `cv-queue acls describe --markdown` prints (default namespace)."""
    from cv_queue.kafka.admin.acls import markdown_table
    from cv_queue.settings import QueueSettings

    return markdown_table(QueueSettings(namespace=""))


def write_acl_table(path: Path) -> None:
    text = path.read_text()
    head = text.split(ACL_START, 1)[0]
    tail = text.split(ACL_END, 1)[1]
    embedded_acl_table(text)  # the markers are there
    path.write_text(f"{head}{ACL_START}{acl_table()}{ACL_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cv_queue_tests.doc_checks")
    parser.add_argument("--acl-table", type=Path, metavar="FILE",
                        help="rewrite the ACL table between the acl-table markers of FILE")
    args = parser.parse_args(argv)
    if args.acl_table:
        write_acl_table(args.acl_table)
        return 0
    found = [p for page in doc_files() for p in problems(page, page.read_text())] + read_elsewhere_problems()
    print("\n".join(found) or "the docs check out")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
