"""Secrets only from the environment or from files with safe permissions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qcd.config import TlsSettings
from qcd.errors import ConfigError
from qcd.ingest.scp import build_ssl_context
from qcd.outputs.alert_settings import WebhookChannel
from qcd.outputs.alerts import WebhookSender
from qcd.secrets import check_private_file, pem_has_private_key, read_secret

posix_only = pytest.mark.skipif(os.name != "posix", reason="permission bits are POSIX")


def _file(path: Path, mode: int, text: str = "s3cret\n") -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@posix_only
@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_files_pass(tmp_path: Path, mode: int) -> None:
    f = _file(tmp_path / "k.pem", mode)
    assert check_private_file(f, "x") == f


@posix_only
@pytest.mark.parametrize(("mode", "who"), [(0o640, "group"), (0o604, "others"),
                                           (0o644, "group and others"),
                                           (0o620, "group"), (0o666, "group and others")])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    f = _file(tmp_path / "server.key", mode)
    with pytest.raises(ConfigError) as err:
        check_private_file(f, "ingest.tls.key_file")
    message = str(err.value)
    assert message.startswith("ingest.tls.key_file: ")
    assert str(f) in message
    assert f"accessible by {who} (mode {mode:04o})" in message
    assert f"chmod 600 {f}" in message


@posix_only
def test_symlink_is_judged_by_its_target(tmp_path: Path) -> None:
    target = _file(tmp_path / "real.key", 0o644)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="mode 0644"):
        check_private_file(link, "k")
    target.chmod(0o600)
    check_private_file(link, "k")


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^k: cannot read .*nope\.key"):
        check_private_file(tmp_path / "nope.key", "k")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="is not a regular file"):
        check_private_file(d, "k")


def test_pem_has_private_key(tmp_path: Path) -> None:
    cert = _file(tmp_path / "c.pem", 0o644, "-----BEGIN CERTIFICATE-----\nAAA\n")
    bundle = _file(tmp_path / "b.pem", 0o600, "-----BEGIN CERTIFICATE-----\nAAA\n"
                   "-----BEGIN RSA PRIVATE KEY-----\nBBB\n")
    assert not pem_has_private_key(cert)
    assert pem_has_private_key(bundle)
    assert not pem_has_private_key(tmp_path / "missing.pem")


@posix_only
def test_read_secret_env_then_file(tmp_path: Path) -> None:
    assert read_secret("HOOK", "w", {"HOOK": "from-env", "HOOK_FILE": "/nonexistent"}) \
        == "from-env"
    assert read_secret("HOOK", "w", {}) is None
    good = _file(tmp_path / "hook", 0o600, "from-file\n")
    assert read_secret("HOOK", "w", {"HOOK_FILE": str(good)}) == "from-file"
    assert read_secret("HOOK", "w", {"HOOK": "", "HOOK_FILE": str(good)}) == "from-file"
    crlf = _file(tmp_path / "crlf", 0o600, "Bearer abc\r\n")
    assert read_secret("AUTH", "w", {"AUTH_FILE": str(crlf)}) == "Bearer abc"
    empty = _file(tmp_path / "empty", 0o600, "")
    assert read_secret("HOOK", "w", {"HOOK_FILE": str(empty)}) is None
    loose = _file(tmp_path / "loose", 0o644)
    with pytest.raises(ConfigError, match=r"webhook ops \(HOOK_FILE\): .*loose.*mode 0644"):
        read_secret("HOOK", "webhook ops", {"HOOK_FILE": str(loose)})


@posix_only
def test_webhook_secret_from_file(tmp_path: Path) -> None:
    channel = WebhookChannel(name="ops", url="http://127.0.0.1:9/", secret_env="QCD_HOOK")
    good = _file(tmp_path / "hook", 0o600, "k\n")
    WebhookSender(channel, environ={"QCD_HOOK_FILE": str(good)})
    loose = _file(tmp_path / "loose", 0o640)
    with pytest.raises(ConfigError, match="QCD_HOOK_FILE.*accessible by group"):
        WebhookSender(channel, environ={"QCD_HOOK_FILE": str(loose)})
    with pytest.raises(ConfigError, match="QCD_HOOK .*is not set"):
        WebhookSender(channel, environ={})


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=qcd", "-keyout", "server.key", "-out", "server.crt"],
                   cwd=d, check=True, capture_output=True)
    return d / "server.crt", d / "server.key"


@posix_only
def test_listener_refuses_a_world_readable_tls_key(keypair: tuple[Path, Path]) -> None:
    cert, key = keypair
    tls = TlsSettings(enabled=True, cert_file=str(cert), key_file=str(key))
    key.chmod(0o600)
    assert build_ssl_context(tls) is not None
    key.chmod(0o644)
    try:
        with pytest.raises(ConfigError, match=f"ingest.tls.key_file: {key} .*mode 0644"):
            build_ssl_context(tls)
    finally:
        key.chmod(0o600)


@posix_only
def test_listener_checks_a_cert_file_that_bundles_the_key(keypair: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    cert, key = keypair
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    bundle.chmod(0o644)
    tls = TlsSettings(enabled=True, cert_file=str(bundle), key_file=str(key))
    with pytest.raises(ConfigError, match=r"ingest.tls.cert_file \(it holds a private key\)"):
        build_ssl_context(tls)
    bundle.chmod(0o600)
    assert build_ssl_context(tls) is not None
    assert build_ssl_context(TlsSettings(enabled=False)) is None


@posix_only
def test_stow_authorization_file_with_loose_permissions_is_not_sent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qcd.outputs.dicomweb import StowSender
    from qcd.outputs.settings import Destination

    loose = _file(tmp_path / "auth", 0o644, "Bearer t0ken\n")
    monkeypatch.setenv("QCD_STOW_AUTH_FILE", str(loose))
    dest = Destination(name="pacs", stow_url="http://127.0.0.1:9/dicom-web",
                       auth_env="QCD_STOW_AUTH")
    outcomes = StowSender()._post(dest, [b"x", b"y"], ["1.2.3", "1.2.4"])
    assert len(outcomes) == 2
    for o in outcomes:
        assert o.status is None and not o.permanent  # fixable: retried with back-off
        assert "QCD_STOW_AUTH_FILE" in o.comment and "mode 0644" in o.comment
