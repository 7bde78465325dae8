"""The documentation's commands work as written (docs/testing.md, "The documentation's commands").

Every ``autoreg …`` the docs show, in a shell block or in the prose, goes
through click's own parser, so a wrong command, option or argument fails here.
Blocks marked ``<!-- runnable -->`` must work as written: shell syntax, every
program present, every path under /usr/share/autoreg shipped by a package,
``make`` targets that exist, shipped hooks that answer ``--help``.  Two kinds
run for real:

- ``<!-- runnable: sshd -->``: in a private mount namespace whose /etc/ssh is a
  scratch copy of Debian's layout, with stubs for what would change the machine
  (``adduser``, ``systemctl``); then ``sshd -t`` and ``sshd -T`` judge the result;
- ``<!-- runnable: lab -->``: on a namespace lab host whose /etc and /usr/share
  are overlays holding what the packages install; a node announces and must be
  registered by what the block set up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from registration.cli import cli
from support.autoreg_lab import AutoregLab, wait_until
from support.docblocks import (
    Block,
    Command,
    blocks,
    check_autoreg,
    commands,
    inline_autoreg,
    is_placeholder,
)
from support.prerequisites import have_tools
from support.sync_store import SyncStore

REPO = Path(__file__).resolve().parents[2]
DOCS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted(REPO.glob("*/README.md")),
]
ALL_BLOCKS = [block for path in DOCS for block in blocks(path, root=REPO)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("sh", "console")]
RUNNABLE = [b for b in ALL_BLOCKS if b.runnable]
KINDS = {"": "parsed and checked", "sshd": "run, then sshd -t", "lab": "run on the lab"}

#: Programs a runnable block may use although this machine may lack them, and why
#: that is fine here.  Every other program must be installed (tools/bootstrap.sh).
MAY_BE_ABSENT = {
    "systemctl": "systemd's: a test never starts or reloads the machine's services",
    "apt": "installs the .deb packages: tests/packaging does that in a Debian root",
    "adduser": "creates a system account: the sshd block runs it as a stub",
}
#: Shell builtins and keywords: nothing to look up.
BUILTINS = frozenset({"cd", "echo", "printf", "export", "set", "test", "[", "true", ":", "exit"})


def _ids(items: list[Block]) -> list[str]:
    return [b.where for b in items]


def _installed_files() -> dict[str, Path]:
    """Absolute path on an installed system -> the file of this tree (debian/*.install)."""
    out: dict[str, Path] = {}
    for install in (REPO / "debian").glob("*.install"):
        for line in install.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            source, target = line.split()
            out["/" + target.strip("/") + "/" + Path(source).name] = REPO / source
    return out


INSTALLED = _installed_files()
#: autoreg-controller's postinst links the shipped hooks from hooks.d.
LINKED = {
    f"/etc/autoreg/hooks.d/{role}": REPO / "scripts" / role for role in ("walrus", "cc", "sc", "nc")
}


def _shipped(path: str) -> Path | None:
    """The tree's file behind an installed path (a file, or a directory a package fills)."""
    path = path.rstrip("/")
    if path in INSTALLED:
        return INSTALLED[path]
    if path in LINKED:
        return LINKED[path]
    if any(p.startswith(path + "/") for p in INSTALLED):
        return REPO  # a directory: there is no single file behind it
    return None


# -- the markers ----------


def test_markers_sit_on_shell_blocks() -> None:
    for block in RUNNABLE:
        assert block.lang in ("sh", "console"), f"{block.where}: a runnable {block.lang} block"
        assert block.kind in KINDS, f"{block.where}: unknown kind {block.kind!r}"


def test_the_runnable_blocks_are_there() -> None:
    """The docs test must not become vacuous: these are the blocks the issue was about."""
    assert len(RUNNABLE) >= 15, _ids(RUNNABLE)
    (sshd_block,) = [b for b in RUNNABLE if b.kind == "sshd"]
    assert sshd_block.label == "docs/admin.md"
    assert "sshd_config.d" in sshd_block.text
    (lab_block,) = [b for b in RUNNABLE if b.kind == "lab"]
    assert "install -m 755 /usr/share/autoreg/hooks/walrus" in lab_block.text
    hooks = {b.label for b in RUNNABLE if "install -m 755" in b.text}
    assert hooks == {"docs/admin.md", "docs/hooks.md"}


# -- every autoreg command, marked or not, anywhere ----------

AUTOREG_COMMANDS = [
    (block, command)
    for block in SHELL_BLOCKS
    for command in commands(block)
    if command.argv[0] == "autoreg"
]


@pytest.mark.parametrize(
    ("block", "command"),
    AUTOREG_COMMANDS,
    ids=[f"{b.label}:{c.line}" for b, c in AUTOREG_COMMANDS],
)
def test_autoreg_commands_in_blocks_parse(block: Block, command: Command) -> None:
    try:
        check_autoreg(cli, list(command.argv[1:]))
    except click.UsageError as exc:
        pytest.fail(f"{block.label}:{command.line}: `{command.source}`: {exc.format_message()}")


INLINE = [(path, n, text, variants) for path in DOCS for n, text, variants in inline_autoreg(path)]


@pytest.mark.parametrize(
    ("path", "line", "text", "variants"),
    INLINE,
    ids=[f"{p.relative_to(REPO)}:{n}" for p, n, _, _ in INLINE],
)
def test_autoreg_commands_in_prose_parse(
    path: Path, line: int, text: str, variants: list[list[str]]
) -> None:
    """Prose may name a command without its required options, never a wrong one."""
    for args in variants:
        try:
            check_autoreg(cli, args, allow_group=True)
        except click.MissingParameter:
            continue
        except click.BadOptionUsage as exc:
            if "requires an argument" in exc.format_message() and args[-1].startswith("-"):
                continue  # `autoreg exec --parallel`: the option named, not used
            pytest.fail(f"{path.relative_to(REPO)}:{line}: `{text}`: {exc.format_message()}")
        except click.UsageError as exc:
            pytest.fail(f"{path.relative_to(REPO)}:{line}: `{text}`: {exc.format_message()}")


def test_the_parser_check_catches_what_the_issue_found() -> None:
    """The mistakes of the issue, and their kin, fail the check; placeholders pass."""
    bad = [
        ["events", "NODE", "OTHER"],  # an extra argument
        ["events", "--nodes", "NODE"],  # no such option
        ["tunnel", "sshd-confg"],  # no such command
        ["lockdown", "maybe"],  # not a choice
        ["register", "--role", "cc", "--ip", "198.18.0.5"],  # a required option missing
        ["exec", "--parallel", "many", "--", "uptime"],  # not a number
        ["list", "--state", "bogus"],
    ]
    for args in bad:
        with pytest.raises(click.UsageError):
            check_autoreg(cli, args)
    check_autoreg(cli, ["show", "NODE", "--full"])
    check_autoreg(cli, ["register", "--role", "cc", "--ip", "IP", "--fingerprint", "SHA256:…"])
    assert is_placeholder("NODE_ID") and not is_placeholder("nc1")


# -- runnable blocks: syntax, programs, shipped paths ----------


def _program(command: Command) -> tuple[str, list[str]]:
    """The program a command runs (through ``env``) and its arguments."""
    argv = list(command.argv)
    if argv[0] == "env":
        argv = argv[1:]
        while argv and (argv[0].startswith("-") or "=" in argv[0]):
            argv = argv[2:] if argv[0] in ("-u", "--unset") else argv[1:]
    return argv[0], argv[1:]


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))


@pytest.mark.parametrize("block", RUNNABLE, ids=_ids(RUNNABLE))
def test_runnable_block_is_sound(block: Block) -> None:
    script = "\n".join(c.source for c in commands(block)) if block.lang == "console" else block.text
    syntax = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, check=False)
    assert syntax.returncode == 0, f"{block.where}: sh -n: {syntax.stderr}"
    found = commands(block)
    assert found, f"{block.where}: no command in a runnable block"
    for command in found:
        where = f"{block.label}:{command.line}: `{command.source}`"
        program, args = _program(command)
        if program in BUILTINS or program == "autoreg":
            pass
        elif program.startswith("/"):
            shipped = _shipped(program)
            assert shipped is not None and shipped.is_file(), f"{where}: nothing ships {program}"
            if args == ["--help"]:
                helped = subprocess.run(
                    [str(shipped), "--help"], capture_output=True, text=True, check=False
                )
                assert helped.returncode == 0, f"{where}: {helped.stderr}"
        elif "/" in program:
            assert (REPO / program).is_file(), f"{where}: no {program} in the tree"
        elif not have_tools(program):
            assert program in MAY_BE_ABSENT, f"{where}: {program} is not installed"
        if program == "make":
            assert set(args) <= _make_targets(), f"{where}: no such make target"
        for word in args:
            if word.startswith("/usr/share/autoreg"):
                assert _shipped(word) is not None, f"{where}: no package ships {word}"


# -- runnable: sshd ----------

#: Debian 12's /etc/ssh/sshd_config, the lines that matter (the rest are comments).
DEBIAN_SSHD_CONFIG = """\
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem\tsftp\t/usr/lib/openssh/sftp-server
"""

needs_mount_namespace = pytest.mark.prerequisite(
    os.geteuid() == 0 and have_tools("unshare", "mount", "/usr/sbin/sshd", "ssh-keygen"),
    reason="needs root, unshare(1) and OpenSSH's sshd for a private /etc/ssh",
)


def _autoreg_wrapper(directory: Path) -> Path:
    """An ``autoreg`` on PATH that runs this tree."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "autoreg"
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}} "
        f'exec {sys.executable} -m registration "$@"\n'
    )
    wrapper.chmod(0o755)
    return directory


def _stubs(directory: Path, log: Path, names: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        stub = directory / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> {log}\n')
        stub.chmod(0o755)
    return directory


@needs_mount_namespace
@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.kind == "sshd"], ids=lambda b: b.where)
def test_sshd_block_runs_and_sshd_accepts_the_result(block: Block, tmp_path: Path) -> None:
    seed = tmp_path / "etc-ssh"
    (seed / "sshd_config.d").mkdir(parents=True)
    (seed / "sshd_config").write_text(DEBIAN_SSHD_CONFIG)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(seed / "ssh_host_ed25519_key")],
        check=True,
    )
    out = tmp_path / "out"
    out.mkdir()
    calls = tmp_path / "stub-calls"
    conf = tmp_path / "autoreg.conf"
    conf.write_text(f"[autoreg]\nstate_dir = {tmp_path / 'state'}\nkeys_dir = {tmp_path / 'k'}\n")
    script = tmp_path / "block.sh"
    script.write_text(
        "set -e\n"
        f"{block.text}\n"
        "# the test's own checks, in the same private /etc/ssh\n"
        "sshd -t\n"
        f"sshd -T -C user=autoreg-callback,host=node,addr=198.18.0.9 > {out}/callback\n"
        f"sshd -T -C user=root,host=admin,addr=198.18.0.10 > {out}/root\n"
        f"cp -a /etc/ssh/. {out}/etc-ssh/\n"
    )
    (out / "etc-ssh").mkdir()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    stubs = _stubs(tmp_path / "stubs", calls, ["adduser", "systemctl"])
    bin_dir = _autoreg_wrapper(tmp_path / "bin")
    path = f"{stubs}:{bin_dir}:/usr/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -n -t tmpfs -o mode=0755 tmpfs /etc/ssh && cp -a "$1"/. /etc/ssh/ && exec sh "$2"',
         "sh", str(seed), str(script)],
        env={**os.environ, "PATH": path, "AUTOREG_CONFIG": str(conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{block.where}:\n{result.stdout}\n{result.stderr}"
    # The machine's own /etc/ssh was never written: no package ships this file.
    assert not Path("/etc/ssh/sshd_config.d/autoreg-callback-port.conf").exists()
    stubbed = calls.read_text().splitlines()
    assert any(c.startswith("adduser --system") and c.endswith("autoreg-callback") for c in stubbed)
    assert "systemctl reload ssh" in stubbed  # reached only when sshd -t passed
    callback = (out / "callback").read_text().splitlines()
    for setting in (
        "port 22",
        "port 2222",
        "forcecommand /bin/false",
        "allowtcpforwarding remote",
        "permittty no",
        "authorizedkeysfile /etc/autoreg/callback_authorized_keys",
    ):
        assert setting in callback, setting  # fmt: skip
    root = (out / "root").read_text().splitlines()
    # The Match block holds nothing global: another user keeps Debian's settings.
    assert {"port 22", "port 2222", "x11forwarding yes", "usepam yes"} <= set(root)
    assert "forcecommand /bin/false" not in root
    dropins = sorted(p.name for p in (out / "etc-ssh" / "sshd_config.d").iterdir())
    assert dropins == ["autoreg-callback-port.conf", "autoreg-callback.conf"]


@pytest.mark.prerequisite(
    os.geteuid() == 0 and have_tools("/usr/sbin/sshd", "ssh-keygen"), reason="needs root and sshd"
)
def test_the_old_way_is_what_sshd_refuses(tmp_path: Path) -> None:
    """Why the drop-ins: the block appended to sshd_config, then Port, fails `sshd -t`."""
    from registration._config import Config
    from registration.controller import sshd_match_block

    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "sshd_config"
    config.write_text(
        f"HostKey {key}\nUsePAM no\n" + sshd_match_block(Config()) + "Port 22\nPort 2222\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    result = subprocess.run(
        ["/usr/sbin/sshd", "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "Directive 'Port' is not allowed within a Match block" in result.stderr


# -- runnable: lab ----------


@pytest.mark.netns
@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.kind == "lab"], ids=lambda b: b.where)
def test_lab_block_sets_up_a_registrar_that_registers(
    block: Block, alab: AutoregLab, tmp_path: Path
) -> None:
    """The registrar set-up, as written, on a host that looks installed; a Walrus comes."""
    walrus = alab.node("walrus", "walrus")
    host = alab.lab.add_host("clc")
    upper, work = tmp_path / "upper", tmp_path / "work"
    etc, share = upper / "etc", upper / "share"
    for directory in (etc, share, work / "etc", work / "share"):
        directory.mkdir(parents=True)
    # What python3-autoreg and autoreg-controller install (debian/*.install, *.dirs,
    # postinst), in the overlays' upper layers.
    for installed, source in INSTALLED.items():
        for prefix, layer in (("/etc/autoreg/", etc), ("/usr/share/autoreg/", share)):
            if installed.startswith(prefix):
                target = layer / "autoreg" / installed[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    for directory in ("autoreg/autoreg.conf.d", "autoreg/credentials", "autoreg/hooks.d"):
        (etc / directory).mkdir(parents=True, exist_ok=True)
    for role in ("walrus", "cc", "sc", "nc"):
        (etc / "autoreg" / "hooks.d" / role).symlink_to(f"/usr/share/autoreg/hooks/{role}")
    state = tmp_path / "state"
    # The admin's configuration, as a drop-in: the lab's network, and no state on the machine.
    (etc / "autoreg" / "autoreg.conf.d" / "10-lab.conf").write_text(
        "[autoreg]\n"
        f"state_dir = {state}\n"
        "interfaces = eth0\n"
        "transport = zeroconf\n"
        "[node]\n"
        "id = clc-docs\n"
        "interface = eth0\n"
        "[controller]\n"
        "connect_timeout = 3\n"
        "retry_initial = 0.5\n"
        "retry_max = 2\n"
        f"node_receipt_path = {alab.node_dir('{id}')}/receipt.json\n"
    )
    script = tmp_path / "block.sh"
    script.write_text("set -e\n" + block.text + "\n")
    setup = " && ".join(
        f"mount -n -t overlay overlay "
        f"-o lowerdir={lower},upperdir={layer},workdir={work / name} {lower}"
        for lower, layer, name in (("/etc", etc, "etc"), ("/usr/share", share, "share"))
    )
    bin_dir = _autoreg_wrapper(tmp_path / "bin")
    proc = host.spawn(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f'{setup} && exec sh "$0"', str(script)],
        env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        log_name="docs-block",
    )  # fmt: skip
    public = etc / "autoreg" / "keys" / "controller_ed25519.pub"
    wait_until(public.exists, 30, lambda: f"`autoreg keys init`:\n{proc.log_text()}")
    assert walrus.sshd is not None
    walrus.sshd.authorized_keys_path.write_text(public.read_text())  # what media do on a node
    proc.wait_for_log(r"registrar clc started", 30)
    walrus.start_announcer()

    def registered() -> bool:
        if not (state / "autoreg.db").exists():
            return False
        with SyncStore(state / "autoreg.db", readonly=True) as store:
            rec = store.get(walrus.node_id)
        return rec is not None and rec.state.value in ("registered", "failed")

    wait_until(registered, 40, lambda: proc.log_text()[-3000:])
    with SyncStore(state / "autoreg.db", readonly=True) as store:
        rec = store.get(walrus.node_id)
        events = store.events(node_id=walrus.node_id, limit=100)
    assert rec is not None and rec.state.value == "registered", (rec, proc.log_text()[-3000:])
    (done,) = [e for e in events if e.kind == "registered"]
    assert done.data["hook"] == "/etc/autoreg/hooks.d/walrus"
    assert f"walrus: done: walrus {walrus.node_id} registered" in done.data["stdout"]
    copy = etc / "autoreg" / "hooks.d" / "walrus"
    assert copy.is_file() and not copy.is_symlink()  # `install` replaced the link with a copy
    assert "no registrar" not in proc.log_text()
