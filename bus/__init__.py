"""The bus: NATS subjects, the wire protocol, codecs, the embedded server and the one
connection class. Imports nothing else of Baton; agents and the orchestrator meet here."""

from bus import subjects
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus, InboxConsumer, Incoming
from bus.errors import (
    BusError,
    InvalidSubjectToken,
    MalformedMessage,
    OversizedMessage,
    RequestFailed,
    ServerStartError,
)
from bus.protocol import (
    AgentInbound,
    AssignAck,
    AssignAcks,
    AssignBatch,
    Assignment,
    AssignReply,
    Control,
    ErrorReply,
    Heartbeat,
    HeldTask,
    InboxMessage,
    Payload,
    Progress,
    ProgressBatch,
    ReportAck,
    ReportBatch,
    ReportReply,
    TaskFailure,
    TaskResult,
)
from bus.server import EmbeddedNats, die_with_parent, find_binary
from bus.tracecontext import TraceContext, new_trace

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AgentInbound",
    "AssignAck",
    "AssignAcks",
    "AssignBatch",
    "AssignReply",
    "Assignment",
    "Bus",
    "BusError",
    "Control",
    "Decoder",
    "EmbeddedNats",
    "ErrorReply",
    "Heartbeat",
    "HeldTask",
    "InboxConsumer",
    "InboxMessage",
    "Incoming",
    "InvalidSubjectToken",
    "MalformedMessage",
    "OversizedMessage",
    "Payload",
    "Progress",
    "ProgressBatch",
    "ReportAck",
    "ReportBatch",
    "ReportReply",
    "RequestFailed",
    "ServerStartError",
    "TaskFailure",
    "TaskResult",
    "TraceContext",
    "die_with_parent",
    "encode",
    "find_binary",
    "new_trace",
    "subjects",
]
