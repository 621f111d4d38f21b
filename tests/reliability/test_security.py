"""Security checks that need no pipeline: Kafka SASL/SSL client settings, every Kafka client built
from them, redaction of a planted PII set (also through the capture client), and a dependency audit
of the pinned packages (pip-audit over requirements.lock).
"""
from __future__ import annotations

import ast
import json
import os
import socket
import ssl
import subprocess
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from services.capture.client import CaptureClient, CaptureSettings
from services.common.catalog import CALLS_CAPTURED, topic_name
from services.common.redaction import Redactor
from services.common.settings import KafkaSettings, REPO_ROOT, load_settings
from services.common.streams import WorkerSettings, broker_credentials, make_app
from tests.reliability.support import TASK
from tests.support import read_topic

pytestmark = pytest.mark.reliability

PASSWORD = "s3cr3t-Kafka-pw"


# -- Kafka SASL / SSL ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA and a client certificate signed by it (openssl)."""
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=graduate-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj",
        "/CN=graduate-client")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "client.pem", "-days", "1")
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}


def combinations(tls: dict[str, Path]) -> list[KafkaSettings]:
    out = [KafkaSettings(bootstrap="b1:9093,b2:9093", security_protocol="SSL", ssl_cafile=tls["ca"],
                         ssl_certfile=tls["cert"], ssl_keyfile=tls["key"]),
           KafkaSettings(bootstrap="b1:9093", security_protocol="SSL", ssl_cafile=tls["ca"])]
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            extra = {"ssl_cafile": tls["ca"]} if protocol == "SASL_SSL" else {}
            out.append(KafkaSettings(bootstrap="b1:9093", security_protocol=protocol, sasl_mechanism=mechanism,
                                     sasl_username="graduate", sasl_password=PASSWORD, **extra))
    return out


def test_sasl_and_ssl_settings_reach_every_kind_of_kafka_client(tls_files, ledger):
    checked = 0
    for k in combinations(tls_files):
        cfg = k.client_config()
        assert cfg["security_protocol"] == k.security_protocol
        if k.security_protocol.endswith("SSL"):
            ctx = cfg["ssl_context"]
            assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname  # the broker is verified
            assert ctx.cert_store_stats()["x509_ca"] == 1  # our CA, not (only) the system store
        if k.security_protocol.startswith("SASL"):
            assert (cfg["sasl_mechanism"], cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == (
                k.sasl_mechanism, "graduate", PASSWORD)
        # faust workers get the same through their credentials
        faust_cfg = credentials_to_aiokafka_auth(broker_credentials(k))
        assert faust_cfg["security_protocol"] == k.security_protocol
        for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
            assert faust_cfg.get(name) == cfg.get(name), name
        assert ("ssl_context" in cfg) == (faust_cfg.get("ssl_context") is not None)
        app = make_app("profiler", WorkerSettings(kafka=k, topic_namespace="t."))
        assert app.conf.broker_credentials is not None
        # and the password is never shown
        for shown in (repr(k), str(k), k.model_dump_json(), repr(WorkerSettings(kafka=k))):
            assert PASSWORD not in shown
        checked += 1
    ledger("Kafka SASL/SSL client configuration", f"{checked} combinations (SSL with/without client cert; "
           "SASL_PLAINTEXT and SASL_SSL × PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)", "n/a",
           "aiokafka clients and faust workers get the same protocol, mechanism, user, password and a verifying "
           "SSL context with the configured CA; the password is in no repr or dump")


def test_incomplete_sasl_settings_fail_at_start_naming_the_variables(monkeypatch):
    monkeypatch.setenv("GRADUATE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("GRADUATE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    k = load_settings(KafkaSettings)
    with pytest.raises(ValueError, match="GRADUATE_KAFKA_SASL_USERNAME"):
        k.client_config()
    monkeypatch.setenv("GRADUATE_KAFKA_SECURITY_PROTOCOL", "SASL_SCRAM")
    with pytest.raises(SystemExit, match="GRADUATE_KAFKA_SECURITY_PROTOCOL"):
        load_settings(KafkaSettings)
    monkeypatch.setenv("GRADUATE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("GRADUATE_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises((FileNotFoundError, ssl.SSLError, OSError)):
        load_settings(KafkaSettings).client_config()


KAFKA_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}


def test_every_kafka_client_in_the_code_is_built_from_client_config():
    """A client built with its own bootstrap_servers would ignore SASL/SSL: none may exist."""
    offenders, seen = [], 0
    for path in [*(REPO_ROOT / "services").rglob("*.py"), *(REPO_ROOT / "trainer").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in KAFKA_CLIENTS:
                seen += 1
                spread = [k.value for k in node.keywords if k.arg is None]
                uses_config = any("client_config" in ast.unparse(v) or ast.unparse(v) == "cfg" for v in spread)
                if not uses_config or any(k.arg == "bootstrap_servers" for k in node.keywords):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert seen >= 8 and not offenders, offenders


# -- PII -----------------------------------------------------------------------------------------
PLANTED = {
    "email": ["jane.doe@example.com", "a.b+bank@mail.co.uk", "MIXED.Case_99@Sub.Example.ORG",
              "maria.muller@posteo.de", "jose.garcia@correo.es", "ana@bücher.de"],
    "phone": ["+44 7700 900123", "(555) 123-4567", "+1-202-555-0173", "020 7946 0958", "+49 30 12345678",
              "555.123.4567", "07700900123"],
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "6011111111111117",
             "4012888888881881", "3530 1113 3330 0000", "5555555555554444"],
}
SENTENCES = ["my email is {} thanks", "card {}, please help", "call me at {}.", "{}", "({}) was charged twice"]


def test_the_redactor_removes_every_planted_value_wherever_it_sits(ledger):
    redact = Redactor({})
    tried, leaks = 0, []
    for kind, values in PLANTED.items():
        for value in values:
            for sentence in SENTENCES:
                tried += 1
                if value in redact(sentence.format(value)).text:
                    leaks.append((kind, value, sentence))
    assert not leaks, f"{len(leaks)} of {tried} planted values survive redaction: " + "; ".join(
        f"{k} {v!r} in {s!r}" for k, v, s in leaks[:6])
    ledger("PII planted in text (regex coverage)", f"{sum(map(len, PLANTED.values()))} values × {len(SENTENCES)} "
           f"positions = {tried}", "0 leaks", "n/a")


async def test_a_call_captured_with_the_capture_client_is_redacted_too(kafka_settings, topics, namespace, codec,
                                                                      tmp_path, ledger):
    """Services may publish their frontier calls themselves with the capture client (DESIGN.md, "Who uses
    it"); the captured topic must hold no PII whichever way a call came in."""
    text = "card 4111 1111 1111 1111 did not arrive; mail jane.doe@example.com or call +44 7700 900123"
    client = CaptureClient(kafka_settings, name="pii-probe", namespace=namespace, var_dir=tmp_path,
                           settings=CaptureSettings(reconnect_backoff_s=0.5))
    async with client:
        call_id = await client.arecord_call(task=TASK, input=text, output_raw="card_arrival", output="card_arrival",
                                            latency_ms=12.0)
    records = await read_topic(kafka_settings, topic_name(CALLS_CAPTURED, namespace), min_count=1, timeout=30)
    assert [r.key.decode() for r in records] == [call_id]
    blob = records[0].value
    leaked = [v for v in ("4111 1111 1111 1111", "jane.doe@example.com", "+44 7700 900123") if v.encode() in blob]
    assert not leaked, f"the capture client published unredacted PII to the captured topic: {leaked}"
    ledger("PII in a call published with the capture client", "1 call with a card, an email and a phone", "0 leaks",
           "n/a")


# -- dependency audit ----------------------------------------------------------------------------
def direct_dependencies() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {s.split("==")[0].split("[")[0].strip().lower().replace("_", "-") for s in specs}


def pinned() -> list[tuple[str, str]]:
    out = []
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            out.append((name.strip().lower(), version.split()[0]))
    return out


def reachable_services() -> tuple[list[str], list[str]]:
    """Which vulnerability services pip-audit can use from here, and why the others cannot be."""
    usable, why_not = [], []
    name, version = pinned()[0]
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/{version}/json", timeout=10) as r:
            json.load(r)
        usable.append("pypi")
    except urllib.error.HTTPError as exc:
        why_not.append(f"pypi.org answers {exc.code} for /pypi/{name}/{version}/json (pip-audit needs the "
                       "per-version JSON API; a mirror or proxy may lack it)")
    except (urllib.error.URLError, OSError) as exc:
        why_not.append(f"pypi.org unreachable: {exc}")
    try:
        socket.getaddrinfo("api.osv.dev", 443)
        usable.append("osv")
    except OSError as exc:
        why_not.append(f"api.osv.dev unreachable: {exc}")
    return usable, why_not


def test_dependency_audit_of_the_pinned_packages(tmp_path, ledger):
    """pip-audit over requirements.lock. Fails on a known vulnerability of a DIRECT dependency that has
    a fixed version (bump the pin); vulnerabilities of transitive packages, or without any fix, are
    reported (var/reliability/audit.json and docs/RELIABILITY.md), not failed on."""
    usable, why_not = reachable_services()
    if not usable:
        reason = "dependency audit not possible from this machine: " + "; ".join(why_not)
        ledger("Known vulnerabilities of the pinned packages (pip-audit)", f"{len(pinned())} pinned packages",
               "n/a", f"NOT AUDITED (skipped): {reason}")
        pytest.skip(reason)
    out = tmp_path / "audit.json"
    done = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "pip-audit"), "-r", str(REPO_ROOT / "requirements.lock"),
                           "--no-deps", "--disable-pip", "--progress-spinner", "off", "-s", usable[0],
                           "--format", "json", "-o", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=REPO_ROOT)
    if not out.exists():
        pytest.skip(f"pip-audit produced no report (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    report = json.loads(out.read_text())
    deps = report["dependencies"]
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        pytest.skip(f"pip-audit could audit none of the {len(deps)} pinned packages: {deps[0]['skip_reason']}")
    direct = direct_dependencies()
    found = [{"package": d["name"], "version": d["version"], "id": v["id"], "fix": v["fix_versions"],
              "aliases": v.get("aliases", []), "direct": d["name"].lower() in direct}
             for d in audited for v in d.get("vulns", [])]
    folder = Path(os.environ.get("GRADUATE_VAR_DIR", REPO_ROOT / "var")) / "reliability"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audit.json").write_text(json.dumps({"service": usable[0], "audited": len(audited),
                                                   "skipped": len(deps) - len(audited), "vulnerabilities": found},
                                                  indent=2) + "\n")
    must_fix = [f for f in found if f["direct"] and f["fix"]]
    listed = "; ".join(f"{f['package']} {f['version']} {f['id']} (fix: {', '.join(f['fix']) or 'none'}"
                       f"{', transitive' if not f['direct'] else ''})" for f in found) or "none"
    ledger("Known vulnerabilities of the pinned packages (pip-audit, " + usable[0] + ")",
           f"{len(audited)} of {len(deps)} pinned packages audited", "n/a", f"found: {listed}")
    assert not must_fix, f"direct dependencies with a fixed version available: {must_fix}"
