"""The runbooks: one per alert, the same four sections, and commands that exist.

Runbooks are read at 3 a.m. and followed literally, so what they tell an operator to run
is checked against the real thing: every `stemedb` command line against the CLI's
commands and flags, every StemeDB URL against the HTTP routes of the contract, every
metric name against stemedb.metrics, every relative link against the file tree.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from prometheus_client import CollectorRegistry

from stemedb.cli import cli as stemedb_cli
from stemedb.cli._wal import wal_repair_command, wal_verify_command
from stemedb.config import SCHEMA
from stemedb.metrics import Metrics
from tests.test_alert_rules import declared_metric_names, metric_names_in

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "ops" / "prometheus" / "stemedb.rules.yml"
OPERATIONS = ROOT / "docs" / "operations"
RUNBOOKS = OPERATIONS / "runbooks"
MONITORING = OPERATIONS / "monitoring.md"

SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]
# Runbooks the seed runbook (and the alert runbooks) refer to.
REFERENCED = (
    "disk-full.md",
    "storage-errors.md",
    "failover-to-replica.md",
    "restore-from-backup.md",
)

# The HTTP routes of the product contract (SPEC.md), as (method, path template).
ROUTES = {
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/assertions"),
    ("POST", "/v1/batch"),
    ("GET", "/v1/assertions/{id}"),
    ("GET", "/v1/assertions"),
    ("PUT", "/v1/assertions/{id}/votes/{voter}"),
    ("GET", "/v1/assertions/{id}/votes"),
    ("GET", "/v1/epochs/current"),
    ("POST", "/v1/epochs"),
    ("GET", "/v1/epochs/{n}"),
    ("GET", "/v1/admin/status"),
    ("POST", "/v1/admin/node/drain"),
    ("POST", "/v1/admin/checkpoint"),
    ("GET", "/v1/cluster"),
    ("POST", "/v1/admin/switchover"),
    ("GET", "/leader"),
    ("GET", "/replica"),
}
STEMEDB_URL = re.compile(r"https?://(?:localhost|127\.0\.0\.1):1818\d(/[^\s\"'`)]*)?")

# Lines the seed runbook (seeds/004) gives, which WALFsyncFailure.md keeps verbatim.
SEED_LINES = (
    "curl -s http://localhost:18180/metrics | grep wal_fsync_errors",
    'dmesg | grep -i "i/o error" | tail -20',
    'journalctl --dmesg | grep -i "ext4.*error"',
    "smartctl -a /dev/sda",
    "df -h /var/lib/stemedb/wal",
    "mount | grep /var/lib/stemedb",
    'time sh -c "dd if=/dev/zero of=test.dat bs=4k count=1000 && sync"',
    "mount -o remount,rw /var/lib/stemedb/wal",
    "systemctl stop stemedb-api",
    "umount /var/lib/stemedb/wal",
    "systemctl start stemedb-api",
    "curl -X POST http://localhost:18180/v1/admin/node/drain",
    'journalctl -u stemedb-api | grep "WAL.*corrupt" | tail -10',
    "--segment /var/lib/stemedb/wal/segment.001.wal.corrupted",
    "--output /var/lib/stemedb/wal/segment.001.wal",
    "--truncate-at\n",
    "log_fsync_errors = true",
    "systemctl restart stemedb-api",
    "strace -p $(pgrep stemedb-api) -e fsync,fdatasync -o /tmp/fsync-trace.txt",
    "grep -i error /tmp/fsync-trace.txt",
    'stemedb_wal_fsync_duration_seconds{quantile="0.99"} > 0.1',
    'stemedb-wal-verify --file $segment || echo "ERROR: $segment corrupted"',
    "docs/operations/runbooks/failover-to-replica.md",
    "restore-from-backup.md",
)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for rule in alert_rules()})


def all_runbooks() -> list[Path]:
    return sorted(RUNBOOKS.glob("*.md"))


def headings(text: str, level: int) -> list[str]:
    prefix = "#" * level + " "
    lines = strip_code(text).splitlines()
    return [line[len(prefix) :].strip() for line in lines if line.startswith(prefix)]


# A fenced block, also indented inside a list item.
_FENCED = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```", flags=re.S | re.M)


def strip_code(text: str) -> str:
    return _FENCED.sub("", text)


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, bodies dedented."""
    return [(lang, textwrap.dedent(body)) for _, lang, body in _FENCED.findall(text)]


def shell_commands(text: str) -> list[list[str]]:
    """Simple commands of the shell blocks and inline code, as token lists."""
    sources = [body for lang, body in code_blocks(text) if lang in ("bash", "sh", "")]
    sources += re.findall(r"`([^`\n]+)`", strip_code(text))
    commands = []
    for source in sources:
        joined = source.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0]
            for part in re.split(r"\|\||&&|[|;&]", line):
                try:
                    tokens = shlex.split(part)
                except ValueError:
                    continue
                while tokens and tokens[0] in ("do", "then", "else", "time", "!", "sudo"):
                    tokens = tokens[1:]
                if tokens:
                    commands.append(tokens)
    return commands


def resolve_cli(tokens: list[str]) -> tuple[click.Command, list[str]]:
    """The click command a `stemedb ...` token list runs, and the tokens after it."""
    program, rest = tokens[0], tokens[1:]
    if program == "stemedb-wal-verify":
        return wal_verify_command, rest
    if program == "stemedb-wal-repair":
        return wal_repair_command, rest
    assert program == "stemedb", program
    command: click.Command = stemedb_cli
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"no command `{name}` under `{command.name}`: {tokens}"
        command = sub
    assert not isinstance(command, click.Group), f"incomplete command: {tokens}"
    return command, rest


def options_of(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def route_matches(path: str, template: str) -> bool:
    pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
    return re.fullmatch(pattern, path) is not None


def section(text: str, name: str) -> str:
    match = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, name
    return match.group(1)


# --- one runbook per alert, four sections --------------------------------------------


def test_every_alert_has_a_runbook_with_the_four_sections() -> None:
    names = alert_names()
    assert len(names) >= 10
    for name in names:
        path = RUNBOOKS / f"{name}.md"
        assert path.is_file(), f"missing runbook {path.relative_to(ROOT)}"
        text = path.read_text()
        assert headings(text, 1) == [name], path.name
        assert headings(text, 2) == SECTIONS, path.name


def test_referenced_runbooks_exist_with_the_four_sections() -> None:
    for name in REFERENCED:
        path = RUNBOOKS / name
        assert path.is_file(), f"missing runbook {path.relative_to(ROOT)}"
        assert headings(path.read_text(), 2) == SECTIONS, name


def test_every_runbook_is_an_alert_or_a_referenced_procedure() -> None:
    expected = {f"{name}.md" for name in alert_names()} | set(REFERENCED)
    assert {p.name for p in all_runbooks()} == expected


def test_diagnosis_gives_commands_to_run() -> None:
    for path in all_runbooks():
        diagnosis = section(path.read_text(), "Diagnosis")
        assert code_blocks(diagnosis), f"{path.name}: Diagnosis has no command block"


def test_alert_runbooks_give_promql_and_shell() -> None:
    for name in alert_names():
        diagnosis = section((RUNBOOKS / f"{name}.md").read_text(), "Diagnosis")
        languages = {lang for lang, _ in code_blocks(diagnosis)}
        assert "promql" in languages, f"{name}: no PromQL in Diagnosis"
        assert "bash" in languages, f"{name}: no shell commands in Diagnosis"


def test_runbook_severity_matches_the_rules() -> None:
    for name in alert_names():
        header = (RUNBOOKS / f"{name}.md").read_text().split("## Meaning", 1)[0]
        for rule in alert_rules():
            if rule["alert"] == name:
                assert rule["labels"]["severity"] in header, (name, rule["labels"])


def test_runbooks_quote_the_alert_expression() -> None:
    for rule in alert_rules():
        text = (RUNBOOKS / f"{rule['alert']}.md").read_text()
        first_line = rule["expr"].strip().splitlines()[0].strip()
        if "tier" in rule["labels"]:
            first_line = first_line.split(" > ")[0]  # the tiers are summarised in one block
        assert first_line in text, (rule["alert"], first_line)


# --- the seed runbook ----------------------------------------------------------------


def test_wal_fsync_failure_follows_the_seed_runbook() -> None:
    text = (RUNBOOKS / "WALFsyncFailure.md").read_text()
    for line in SEED_LINES:
        assert line in text, line
    for case in (
        "If the filesystem is read-only",
        "If the disk is failing",
        "If a WAL segment is corrupted",
        "If no hardware or filesystem issue is found",
    ):
        assert case in headings(text, 3), case
    for phrase in ("fsync failed", "Failed to fsync WAL segment", "WAL write error"):
        assert phrase in text, phrase
    assert "wal_fsync_failed" in text


def test_missing_features_are_stated_plainly() -> None:
    failover = (RUNBOOKS / "failover-to-replica.md").read_text()
    assert "A node of its own (no `[cluster]`) has no replica to fail over to." in failover
    restore = (RUNBOOKS / "restore-from-backup.md").read_text()
    assert "**Every restore is a base backup plus the archived WAL" in restore
    assert "stemedb backup restore --from $ARCHIVE --data-dir /var/lib/stemedb" in restore
    for text in (failover, restore):
        assert "systemctl stop stemedb-api" in text
        assert "stemedb wal verify --data-dir /var/lib/stemedb" in text
        assert "systemctl start stemedb-api" in text


# --- what the runbooks tell an operator to run exists -----------------------------------


def docs() -> list[Path]:
    return [*all_runbooks(), MONITORING]


def test_shell_command_extraction() -> None:
    text = (
        "```bash\n"
        "stemedb-wal-repair \\\n  --segment a --output b \\\n  --truncate-at\n"
        "for s in x; do\n  stemedb-wal-verify --file $s || echo bad\ndone\n"
        "curl -s http://localhost:18180/metrics | grep wal  # note\n"
        "```\n"
        "Run `stemedb doctor --url http://localhost:18180` first.\n"
    )
    commands = shell_commands(text)
    assert ["stemedb-wal-repair", "--segment", "a", "--output", "b", "--truncate-at"] in commands
    assert ["stemedb-wal-verify", "--file", "$s"] in commands
    assert ["curl", "-s", "http://localhost:18180/metrics"] in commands
    assert ["stemedb", "doctor", "--url", "http://localhost:18180"] in commands


def test_cli_resolution_rejects_unknown_commands_and_flags() -> None:
    command, rest = resolve_cli(["stemedb", "wal", "verify", "--data-dir", "/x"])
    assert command is wal_verify_command and rest == ["--data-dir", "/x"]
    with pytest.raises(AssertionError):
        resolve_cli(["stemedb", "wal", "rebuild"])
    assert "--truncate-at" in options_of(wal_repair_command)
    assert "--from-replica" not in options_of(wal_repair_command)
    with pytest.raises(AssertionError):
        resolve_cli(["stemedb", "cluster", "failover"])
    command, rest = resolve_cli(["stemedb", "cluster", "switchover", "--candidate", "db2"])
    assert "--candidate" in options_of(command) and rest == ["--candidate", "db2"]


def test_stemedb_commands_exist_with_their_flags() -> None:
    programs = ("stemedb", "stemedb-wal-verify", "stemedb-wal-repair")
    seen = 0
    for path in docs():
        for tokens in shell_commands(path.read_text()):
            if tokens[0] not in programs or tokens == ["stemedb"]:
                continue  # a bare `stemedb` is the name, not a command
            command, rest = resolve_cli(tokens)
            known = options_of(command)
            for token in rest:
                if token.startswith("--"):
                    flag = token.split("=", 1)[0]
                    assert flag in known, f"{path.name}: {' '.join(tokens)}: no {flag}"
            seen += 1
    assert seen >= 20


def test_stemedb_urls_are_routes_of_the_contract() -> None:
    seen = 0
    for path in docs():
        for tokens in shell_commands(path.read_text()):
            if tokens[0] != "curl":
                continue
            method = "GET"
            if "-X" in tokens:
                method = tokens[tokens.index("-X") + 1]
            for token in tokens[1:]:
                match = STEMEDB_URL.fullmatch(token)
                if match is None:
                    continue
                url_path = (match.group(1) or "/").split("?", 1)[0]
                assert any(
                    m == method and route_matches(url_path, template) for m, template in ROUTES
                ), f"{path.name}: {method} {url_path} is not a StemeDB route"
                seen += 1
    assert seen >= 20


def test_metric_names_in_the_docs_are_declared() -> None:
    # Prose may name a histogram by its family name (without _bucket, _sum or _count).
    families = {family.name for family in Metrics(CollectorRegistry()).registry.collect()}
    declared = declared_metric_names() | families
    for path in docs():
        used = {
            name
            for name in metric_names_in(path.read_text())
            # node_exporter's names come from elsewhere; "stemedb_wal_" is a grep prefix.
            if not name.startswith("node_") and name != "up" and not name.endswith("_")
        }
        unknown = sorted(used - declared)
        assert not unknown, f"{path.name}: not declared by stemedb.metrics.Metrics: {unknown}"


def test_config_keys_are_the_documented_ones() -> None:
    keys = {table: {k for t, k in SCHEMA if t == table} for table in ("wal", "checkpoint")}
    for path in docs():
        for table, key in re.findall(r"\[(wal|checkpoint)\] (\w+)", path.read_text()):
            assert key in keys[table], f"{path.name}: unknown key [{table}] {key}"


def test_relative_links_resolve() -> None:
    for path in docs():
        for target in re.findall(r"\]\(([^)\s]+)\)", strip_code(path.read_text())):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            assert resolved.exists(), f"{path.name}: broken link {target}"


def test_monitoring_guide_links_every_runbook() -> None:
    text = MONITORING.read_text()
    for name in alert_names():
        assert f"(runbooks/{name}.md)" in text, name
    for name in REFERENCED:
        assert f"(runbooks/{name})" in text, name
    assert "rule_files:" in text
    assert "inhibit_rules:" in text


def test_no_placeholders_left() -> None:
    for path in docs():
        text = path.read_text()
        for marker in ("TODO", "TBD", "FIXME", "XXX"):
            assert marker not in text, f"{path.name}: {marker}"
