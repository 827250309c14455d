"""The sidecar's exception tree.

    SidecarError
    ├── ConfigError            settings that cannot work (bad URL, missing secret file...)
    ├── IngestError            raw bytes that cannot enter the inbox as HL7
    │   └── FramingError       MLLP framing violated (no start block, oversized frame...)
    ├── MappingError           a stored message that cannot be mapped to FHIR
    │   └── UnsupportedMessage the message type has no map (yet)
    ├── DeidError              de-identification could not guarantee its promise
    │   └── IdentifierLeak     a known identifier survived into de-identified output
    ├── StoreError             storage failed in a way a retry will not fix
    └── PublishError           the event broker refused or did not confirm
        └── (transient by nature: the relay retries)

Every class carries a stable ``code`` so that retries and dead letters key on codes,
never on message text. ``transient`` says whether retrying the same input may succeed.
Lower-layer exceptions are translated at package boundaries with ``raise ... from exc``
so the cause stays attached.
"""

from __future__ import annotations


class SidecarError(Exception):
    code = "sidecar-error"
    transient = False


class ConfigError(SidecarError):
    code = "config"


class IngestError(SidecarError):
    code = "ingest"


class FramingError(IngestError):
    code = "framing"


class MappingError(SidecarError):
    code = "mapping"


class UnsupportedMessage(MappingError):
    code = "unsupported-message"


class DeidError(SidecarError):
    code = "deid"


class IdentifierLeak(DeidError):
    code = "identifier-leak"


class StoreError(SidecarError):
    code = "store"


class PublishError(SidecarError):
    code = "publish"
    transient = True
