"""The SSH client against real OpenSSH sshd on loopback addresses."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from opskit.clients.host_keys import HostKeys
from opskit.clients.ssh import Endpoint, HostKeyError, SSHError, SSHPool, sudo
from sshd import Sshd, keygen
from sshproject import drop_after_sending

HOSTS = [f"127.0.0.{n}" for n in range(11, 15)]


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path / "sshd", HOSTS).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def no_agent(monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def pool_for(sshd: Sshd, tmp_path: Path, *, tofu: bool = False, keys=None) -> SSHPool:
    host_keys = HostKeys(tmp_path / "known_hosts", user_files=[], tofu=tofu)
    return SSHPool(
        host_keys, client_keys=keys or [str(sshd.client_key)], config=[], connect_timeout=5
    )


def ep(sshd: Sshd, address: str, *, pinned: bool = True, port: int | None = None) -> Endpoint:
    return Endpoint(
        name=f"host-{address.rsplit('.', 1)[1]}",
        host=address,
        port=port or sshd.port,
        user="root",
        pinned=sshd.pinned if pinned else None,
    )


def run(coro):
    return asyncio.run(coro)


def test_commands_share_one_persistent_shell(sshd, tmp_path):
    async def go():
        pool = pool_for(sshd, tmp_path)
        host = ep(sshd, HOSTS[0])
        try:
            results = [
                await pool.run(host, f"echo out{n}; echo err{n} >&2; exit {n}") for n in range(10)
            ]
            assert [(r.rc, r.stdout, r.stderr) for r in results] == [
                (n, f"out{n}\n", f"err{n}\n") for n in range(10)
            ]
            assert (await pool.run(host, "printf 'no newline'")).stdout == "no newline"
            assert (await pool.run(host, "printf 'a\\n\\n'")).stdout == "a\n\n"
            await pool.run(host, "cd /tmp; X=1")  # a subshell: nothing leaks into the next
            after = await pool.run(host, 'pwd; echo "X=${X:-unset}"')
            assert after.stdout.splitlines()[1] == "X=unset"
            assert (await pool.run(host, "cat")).stdout == ""  # stdin is /dev/null
            assert (await pool.run(host, "hostname -I >/dev/null; exit 0")).rc == 0
            assert pool.channels_opened == 1
            big = await pool.run(host, "head -c 3000000 /dev/zero | tr '\\0' x")
            assert big.truncated and len(big.stdout) == 1024 * 1024
        finally:
            await pool.aclose()

    run(go())


def test_a_command_past_its_timeout_is_stopped_and_its_shell_reopened(sshd, tmp_path):
    """Past its timeout, what the command started is stopped on the host (one that ignores TERM
    too): it never gets to its next line, the failure says so, and the next command gets a fresh
    shell. A command on a channel of its own is not stopped: it may still be running; nor one
    running a package manager, left to finish."""
    from opskit.clients.ssh import Cut
    from opskit.errors import OutcomeUnknown, SSHAnswerLost

    late = tmp_path / "late"

    async def go():
        pool = pool_for(sshd, tmp_path)
        host = ep(sshd, HOSTS[0])
        cut: list[Cut] = []
        try:
            assert (await pool.run(host, "echo first")).stdout == "first\n"
            with pytest.raises(
                SSHError, match=r"host-11 .*timed out after 0.5s and was stopped: "
            ) as e:
                await pool.run(host, f"sleep 2 & sleep 2; touch {late}", timeout=0.5, cut=cut)
            assert not isinstance(e.value, OutcomeUnknown)
            deaf = f"trap '' TERM; sh -c 'trap \"\" TERM; sleep 30'; touch {late}"
            with pytest.raises(SSHError, match="and was stopped"):
                await pool.run(host, deaf, timeout=0.5, cut=cut)
            assert [c.stopped for c in cut] == [True, True], cut
            assert cut[0].why.endswith("processes gone"), cut
            assert (await pool.run(host, "echo again")).stdout == "again\n"
            # shell, stop, shell, stop, shell
            assert pool.channels_opened == 5
            with pytest.raises(SSHAnswerLost, match="may still be running there"):
                await pool.run(host, "sleep 30", timeout=0.5, stdin="x")
            # a package manager under it is left to finish: nothing of it is touched
            dpkg = tmp_path / "dpkg"
            dpkg.symlink_to(shutil.which("sleep") or "/bin/sleep")
            with pytest.raises(SSHAnswerLost, match=r"left to finish: dpkg \(pid \d+\)"):
                await pool.run(host, f"{dpkg} 3; touch {late}.dpkg", timeout=0.5)
        finally:
            await pool.aclose()

    run(go())
    time.sleep(3)
    assert not late.exists()
    assert Path(f"{late}.dpkg").exists()  # it ran to its end


def test_a_connection_lost_mid_command_is_an_answer_lost_not_a_failure(sshd, tmp_path):
    """The session's sshd dies while a command runs (`kill -9 $PPID` from the command: in a
    subshell $PPID is that of the persistent shell, the sshd serving the connection): the
    command was sent and its end never read, so whether it ran is unknown. A probe's lost
    answer is a plain SSH error: a probe changes nothing. Both hosts are reached again after."""
    from opskit.clients.connections import Door
    from opskit.clients.ssh import HostShell
    from opskit.errors import OutcomeUnknown, SSHAnswerLost

    async def go():
        pool = pool_for(sshd, tmp_path)
        host = ep(sshd, HOSTS[0])
        try:
            with pytest.raises(SSHAnswerLost, match=r"host-11 .*lost while .*kill -9") as lost:
                await pool.run(host, "echo begun; kill -9 $PPID; sleep 5")
            assert isinstance(lost.value, OutcomeUnknown)
            assert "may have run to its end" in str(lost.value)
            assert (await pool.run(host, "echo again")).stdout == "again\n"
            with pytest.raises(SSHAnswerLost, match="lost while"):  # on a channel of its own
                await pool.run(host, "kill -9 $PPID; sleep 5", stdin="x")
            shell = HostShell(pool, host, Door(read_only=True))
            with pytest.raises(SSHError, match="lost while") as probe:
                await shell.run("kill -9 $PPID; sleep 5", probe=True)
            assert not isinstance(probe.value, OutcomeUnknown)
            assert (await pool.run(host, "echo still")).stdout == "still\n"
        finally:
            await pool.aclose()

    run(go())


def test_a_file_whose_connection_drops_at_its_rename_is_an_answer_lost(sshd, tmp_path, monkeypatch):
    """An upload writes a temporary file, then renames it over the path. The connection drops
    (the client aborts it) right after the rename is sent: whether the file was replaced is
    unknown (SSHAnswerLost). Dropped before the rename, the path is untouched: a plain
    SSHError, safe to retry. The host is reached again after each."""
    from opskit.clients.connections import Door
    from opskit.clients.ssh import HostShell
    from opskit.errors import OutcomeUnknown, SSHAnswerLost

    target = tmp_path / "file.txt"
    target.write_text("old\n")

    async def go():
        pool = pool_for(sshd, tmp_path)
        host = ep(sshd, HOSTS[0])
        shell = HostShell(pool, host, Door(read_only=False))
        try:
            renamed = drop_after_sending(monkeypatch, "posix_rename", lambda path: True)
            with pytest.raises(
                SSHAnswerLost, match=r"lost while .*file.txt was being replaced"
            ) as lost:
                await shell.put(b"new\n", str(target), 0o644)
            assert isinstance(lost.value, OutcomeUnknown)
            assert len(renamed) == 1
            chmodded = drop_after_sending(monkeypatch, "chmod", lambda path: True)
            with pytest.raises(SSHError, match="cannot write") as before:
                await shell.put(b"newer\n", str(target), 0o644)
            assert not isinstance(before.value, OutcomeUnknown)
            assert len(chmodded) == 1
            assert target.read_text() in ("old\n", "new\n")  # not "newer": never renamed
            await shell.put(b"last\n", str(target), 0o640)  # reached again
            assert target.read_text() == "last\n"
            assert target.stat().st_mode & 0o777 == 0o640
        finally:
            await pool.aclose()

    run(go())


def test_output_is_passed_on_line_by_line_exactly(sshd, tmp_path):
    """What `output` gets is the command's output cut at its newlines, whatever the chunks:
    nothing of the end marker, an empty line kept, a last line without a newline passed on."""
    commands = [
        "echo one; echo two >&2; echo three",
        "printf 'no newline'",
        "printf 'a\\n\\nb\\n'",
        "printf '\\n'",
        "head -c 60000 /dev/zero | tr '\\0' x; echo; echo tail",  # a line in several packets
        "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
    ]

    async def go():
        pool = pool_for(sshd, tmp_path)
        host = ep(sshd, HOSTS[0])
        try:
            for stdin in (None, "x"):  # the persistent shell, a channel of its own
                for command in commands:
                    seen: list[tuple[str, str]] = []
                    done = await pool.run(
                        host, command, stdin=stdin, output=lambda *line, to=seen: to.append(line)
                    )
                    for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
                        lines = text.split("\n")
                        if lines[-1] == "":
                            lines.pop()
                        said = [t for s, t in seen if s == stream]
                        assert said == lines, (command, stdin)
        finally:
            await pool.aclose()

    run(go())


def test_a_hostshells_lines_reach_its_output_unless_a_probe_or_quiet(sshd, tmp_path):
    """A step's commands stream their lines; a probe's and a quiet one's (a listing the step
    reads) do not, and still answer in full."""
    from opskit.clients.connections import Door
    from opskit.clients.ssh import HostShell

    async def go():
        pool = pool_for(sshd, tmp_path)
        seen: list[tuple[str, str]] = []
        shell = HostShell(
            pool, ep(sshd, HOSTS[0]), Door(read_only=False), output=lambda *line: seen.append(line)
        )
        try:
            assert (await shell.run("echo said")).stdout == "said\n"
            assert (await shell.run("echo read", probe=True)).stdout == "read\n"
            assert (await shell.run("echo listed; echo e >&2", quiet=True)).stdout == "listed\n"
            assert seen == [("stdout", "said")]
        finally:
            await pool.aclose()

    run(go())


def test_a_connection_that_ended_is_opened_again(sshd, tmp_path):
    async def go():
        pool = pool_for(sshd, tmp_path)
        host = ep(sshd, HOSTS[0])
        try:
            assert (await pool.run(host, "echo one")).stdout == "one\n"
            first = (await pool.session(host)).conn
            first.close()  # as a host that went away while a gate waited
            await first.wait_closed()
            assert (await pool.run(host, "echo two")).stdout == "two\n"
            assert (await pool.session(host)).conn is not first
        finally:
            await pool.aclose()

    run(go())


def test_stdin_gets_its_own_channel(sshd, tmp_path):
    async def go():
        pool = pool_for(sshd, tmp_path)
        try:
            result = await pool.run(ep(sshd, HOSTS[0]), "tr a-z A-Z", stdin="hello")
            assert result.stdout == "HELLO" and pool.channels_opened == 1
        finally:
            await pool.aclose()

    run(go())


def test_sudo_never_prompts(sshd, tmp_path):
    async def go():
        pool = pool_for(sshd, tmp_path)
        try:
            result = await pool.run(ep(sshd, HOSTS[0]), sudo('id -u && echo "$0"'))
            assert result.rc == 0 and result.stdout.split()[0] == "0"
        finally:
            await pool.aclose()

    run(go())


def test_unknown_host_is_refused_unless_trust_on_first_use(sshd, tmp_path):
    async def go():
        pool = pool_for(sshd, tmp_path)
        try:
            with pytest.raises(HostKeyError, match=r"unknown host key SHA256:\S+: pin it"):
                await pool.run(ep(sshd, HOSTS[0], pinned=False), "true")
        finally:
            await pool.aclose()
        tofu = pool_for(sshd, tmp_path, tofu=True)
        try:
            assert (await tofu.run(ep(sshd, HOSTS[0], pinned=False), "echo ok")).stdout == "ok\n"
        finally:
            await tofu.aclose()
        recorded = (tmp_path / "known_hosts").read_text()
        assert recorded.startswith(f"[{HOSTS[0]}]:{sshd.port} ssh-ed25519 ")
        later = pool_for(sshd, tmp_path)  # no TOFU: the recorded key is trusted now
        try:
            assert (await later.run(ep(sshd, HOSTS[0], pinned=False), "echo ok")).rc == 0
        finally:
            await later.aclose()

    run(go())


def test_a_changed_host_key_is_a_hard_error(sshd, tmp_path):
    impostor = Sshd(tmp_path / "impostor", ["127.0.0.20"], client_pub=sshd.host_pub)
    (tmp_path / "impostor" / "authorized_keys").write_text(
        Path(str(sshd.client_key) + ".pub").read_text()
    )
    impostor.start()

    async def go():
        pool = pool_for(sshd, tmp_path, tofu=True)  # not even TOFU accepts a changed key
        try:
            host = Endpoint(
                name="ai", host="127.0.0.20", port=impostor.port, user="root", pinned=sshd.pinned
            )
            with pytest.raises(HostKeyError) as info:
                await pool.run(host, "true")
            message = str(info.value)
            assert "ai (root@127.0.0.20:" in message and "HOST KEY CHANGED" in message
            assert message.count("SHA256:") == 2
        finally:
            await pool.aclose()

    try:
        run(go())
    finally:
        impostor.stop()


def test_unreachable_and_failed_login_are_per_host(sshd, tmp_path):
    wrong = tmp_path / "wrong_key"
    keygen(wrong)

    async def go():
        pool = pool_for(sshd, tmp_path)
        bad_key = pool_for(sshd, tmp_path, keys=[str(wrong)])
        try:
            jobs = [pool.run(ep(sshd, h), "hostname; echo fine") for h in HOSTS[:2]]
            jobs.append(pool.run(ep(sshd, "127.0.0.30"), "true"))  # nothing listens there
            jobs.append(bad_key.run(ep(sshd, HOSTS[2]), "true"))
            results = await asyncio.gather(*jobs, return_exceptions=True)
            assert [r.stdout.endswith("fine\n") for r in results[:2]] == [True, True]
            assert isinstance(results[2], SSHError) and "connection refused" in str(results[2])
            assert "host-30" in str(results[2])
            assert isinstance(results[3], SSHError)
            assert "host-13" in str(results[3]) and "authentication failed" in str(results[3])
        finally:
            await pool.aclose()
            await bad_key.aclose()

    run(go())


def test_ssh_config_is_honoured(sshd, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host ai\n  HostName {HOSTS[1]}\n  User root\n  Port {sshd.port}\n"
        f"  IdentityFile {sshd.client_key}\n"
    )
    monkeypatch.setenv("HOME", str(home))

    async def go():
        host_keys = HostKeys(tmp_path / "known_hosts", user_files=[])
        pool = SSHPool(host_keys, connect_timeout=5)  # no keys, no port, no user: the config's
        try:
            result = await pool.run(Endpoint(name="ai", host="ai", pinned=sshd.pinned), "id -un")
            assert result.stdout == "root\n"
        finally:
            await pool.aclose()

    run(go())


def test_through_a_jump_host(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"[{HOSTS[2]}]:{sshd.port} {sshd.pinned}\n")  # the jump host is known too

    async def go():
        keys = HostKeys(tmp_path / "opskit_known_hosts", user_files=[known])
        pool = SSHPool(keys, client_keys=[str(sshd.client_key)], config=[], connect_timeout=5)
        target = Endpoint(
            name="inner",
            host=HOSTS[0],
            port=sshd.port,
            user="root",
            pinned=sshd.pinned,
            jump=f"root@{HOSTS[2]}:{sshd.port}",
        )
        try:
            result = await pool.run(target, "echo inside")
            assert result.stdout == "inside\n"
            # one connection to the jump host, the target's tunnelled through it
            assert set(pool.sessions) == {
                (HOSTS[0], "root", sshd.port),
                (HOSTS[2], "root", sshd.port),
            }
            # a tunnelled connection has no socket of its own (a direct one shows its peer)
            assert (
                pool.sessions[(HOSTS[0], "root", sshd.port)].conn.get_extra_info("peername")[0]
                == ""
            )
            assert (
                pool.sessions[(HOSTS[2], "root", sshd.port)].conn.get_extra_info("peername")[0]
                == HOSTS[2]
            )
        finally:
            await pool.aclose()

    run(go())


def test_sudo_password_goes_on_stdin_only(sshd, tmp_path):
    password = "pw-" + "x" * 12
    command = sudo("id -u; cat", password=True)
    assert password not in command and "sudo -S -p '' -v" in command

    async def go():
        pool = pool_for(sshd, tmp_path)
        try:
            result = await pool.run(ep(sshd, HOSTS[0]), command, stdin=password + "\n")
            # root: sudo asks nothing; the command's stdin is /dev/null, never the password
            assert result.rc == 0 and result.stdout == "0\n"
        finally:
            await pool.aclose()

    run(go())


def test_known_hosts_are_read_once_and_again_when_they_change(tmp_path, monkeypatch):
    import asyncssh

    first, second = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(2))
    known = tmp_path / "known_hosts"
    line = lambda key: f"[10.9.9.9]:2222 {key.export_public_key().decode().strip()}\n"  # noqa: E731
    known.write_text(line(first))
    reads: list[list[str]] = []
    real = asyncssh.read_known_hosts

    def counted(files):
        reads.append(list(files))
        return real(files)

    monkeypatch.setattr(asyncssh, "read_known_hosts", counted)
    keys = HostKeys(tmp_path / "opskit_known_hosts", user_files=[known])
    host = Endpoint(name="h", host="10.9.9.9", port=2222)
    for _ in range(5):  # many hosts, one parse
        assert keys.verify(host, "10.9.9.9", 2222, first.convert_to_public())
    assert reads == [[str(known)]]
    # The file changes (another key): the next check reads it again and sees the change.
    known.write_text(line(second) + "# replaced\n")
    assert not keys.verify(host, "10.9.9.9", 2222, first.convert_to_public())
    assert "HOST KEY CHANGED" in keys.problems["h"]
    assert keys.verify(host, "10.9.9.9", 2222, second.convert_to_public())
    assert len(reads) == 2
    # A key recorded on first use is trusted at once, from opskit's own file.
    tofu = HostKeys(tmp_path / "opskit_known_hosts", user_files=[], tofu=True)
    other = Endpoint(name="o", host="10.9.9.8", port=2222)
    assert tofu.verify(other, "10.9.9.8", 2222, first.convert_to_public())
    strict = HostKeys(tmp_path / "opskit_known_hosts", user_files=[])
    assert strict.verify(other, "10.9.9.8", 2222, first.convert_to_public())
    assert not strict.verify(other, "10.9.9.8", 2222, second.convert_to_public())


def test_aes_gcm_is_offered_first_unless_the_ssh_config_names_ciphers(sshd, tmp_path):
    """asyncssh's ChaCha20-Poly1305 costs the client about 6x AES-GCM's CPU per packet: the
    pool asks for AES-GCM first. A `Ciphers` line (or an Include) in the config is the user's
    word, and wins. Negotiated with the real sshd, read from the connection."""
    config = tmp_path / "ssh_config"

    async def cipher(config_text: str | None) -> str:
        if config_text is not None:
            config.write_text(config_text)
        host_keys = HostKeys(tmp_path / "known_hosts", user_files=[])
        paths = [str(config)] if config_text is not None else []
        pool = SSHPool(
            host_keys, client_keys=[str(sshd.client_key)], config=paths, connect_timeout=5
        )
        try:
            session = await pool.session(ep(sshd, HOSTS[2]))
            return session.conn.get_extra_info("send_cipher")
        finally:
            await pool.aclose()

    assert run(cipher(None)) == "aes128-gcm@openssh.com"
    assert run(cipher("Host *\n  ServerAliveInterval 10\n")) == "aes128-gcm@openssh.com"
    chosen = "Host 127.0.0.*\n  Ciphers chacha20-poly1305@openssh.com\n"
    assert run(cipher(chosen)) == "chacha20-poly1305@openssh.com"
    assert run(cipher("Host *\n  Ciphers=aes256-ctr\n")) == "aes256-ctr"
    # What an Include pulls in is the config's to say: asyncssh's own order (chacha20 first).
    assert run(cipher(f"Include {tmp_path}/none.conf\n")) == "chacha20-poly1305@openssh.com"
