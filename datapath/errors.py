"""The project's one exception tree (library, agent, CLI and CNI plugin all raise from here).

    DatapathError
    ├── BuildError            BPF source could not be compiled or loaded
    │   └── MissingDependency BCC or kernel headers absent (message names the fix)
    ├── AttachError           tc / XDP attach or detach failed
    ├── MapError              a BPF map operation failed (.errno: the syscall's errno, or None)
    ├── BPFObjectError        a bpffs pin could not be made or opened, or an fd not described
    ├── ConfigError           a config file is invalid (names file, key and reason)
    ├── ManifestError         a manifest is invalid (names file, object and field)
    ├── StateError            persisted agent state is unreadable or inconsistent
    ├── KVStoreError          the kvstore (etcd) refused or could not be reached
    ├── APIError              the agent API refused or could not be reached
    │   └── AgentUnreachable
    ├── CNIError              carries a CNI error code
    └── LabError              the netns lab could not be built or torn down
"""
from __future__ import annotations


class DatapathError(Exception):
    """Base of every error this project raises on purpose."""


class BuildError(DatapathError):
    pass


class MissingDependency(BuildError):
    pass


class AttachError(DatapathError):
    pass


class MapError(DatapathError):
    def __init__(self, message: str, errno: int | None = None):
        self.errno = errno
        super().__init__(message)


class BPFObjectError(DatapathError):
    def __init__(self, message: str, errno: int | None = None):
        self.errno = errno
        super().__init__(message)


class ConfigError(DatapathError):
    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


class ManifestError(DatapathError):
    def __init__(self, file: str, obj: str, field: str, reason: str):
        self.file, self.obj, self.field, self.reason = file, obj, field, reason
        super().__init__(f"{file}: {obj}: {field}: {reason}")


class StateError(DatapathError):
    pass


class KVStoreError(DatapathError):
    pass


class APIError(DatapathError):
    def __init__(self, message: str, status: int = 500):
        self.status = status
        super().__init__(message)


class AgentUnreachable(APIError):
    def __init__(self, socket_path: str, why: str):
        super().__init__(f"cannot reach the agent at {socket_path}: {why} "
                         "(is `datapath agent` running? set --socket or DATAPATH_SOCKET)", 503)


class CNIError(DatapathError):
    # CNI spec 1.0.0 well-known codes
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETCONF = 7
    TRY_LATER = 11

    def __init__(self, code: int, msg: str, details: str = ""):
        self.code, self.msg, self.details = code, msg, details
        super().__init__(f"{msg}: {details}" if details else msg)


class LabError(DatapathError):
    pass
