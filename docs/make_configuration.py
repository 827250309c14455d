"""Regenerates docs/configuration.md from the settings object (run: python docs/make_configuration.py).

tests/test_settings.py fails when a setting is missing from the page, so the two stay in step.
"""

from __future__ import annotations

from pathlib import Path

from core.settings import Settings

HEAD = """# Configuration

One typed settings object (`core/settings.py`). Sources, highest priority first: command-line flags,
environment variables `SIDECAR_<NAME>` (upper case), the TOML file named by `SIDECAR_CONFIG` (or
`--config`), the defaults below. Unknown keys are an error, so a typo does not pass silently.
List and table settings are JSON in environment variables
(`SIDECAR_MLLP_ALLOWED_PEERS='["10.1.0.0/16"]'`) and native in TOML.

| setting (TOML key) | environment variable | default | meaning |
|---|---|---|---|
"""

TAIL = """
Example `sidecar.toml`:

```toml
data_dir = "/var/lib/sidecar"
database_url = "postgresql+psycopg://sidecar@127.0.0.1:5432/sidecar"
broker_url = "amqp://guest:guest@127.0.0.1:5672//"
mllp_host = "0.0.0.0"
mllp_port = 2575
mllp_allowed_peers = ["10.20.0.0/16"]
mllp_allowed_senders = ["HIS", "LIS"]
tls_cert_file = "/etc/sidecar/tls/cert.pem"
tls_key_file = "/etc/sidecar/tls/key.pem"
site_timezone = "Asia/Shanghai"
charset_default = "UNICODE UTF-8"
drop_dir = "/var/spool/sidecar"
metrics_port = 9464
secret_file = "/etc/sidecar/secret.key"

[charset_by_sender]
"OLDLIS" = "GB 18030-2000"
"PACSGW|RADIOLOGY" = "8859/1"
```

The pseudonym secret decides every pseudonym and date shift: keep it outside the database,
back it up with the same care as the identified data, and never change it on a running
deployment (every pseudonym would change).
"""


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `{name}` | `SIDECAR_{name.upper()}` | {shown} | {field.description} |")
    return HEAD + "\n".join(rows) + "\n" + TAIL


if __name__ == "__main__":
    Path(__file__).with_name("configuration.md").write_text(render())
