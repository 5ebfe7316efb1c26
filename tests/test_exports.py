"""Each package's public surface is on purpose: a name added or dropped shows up here."""

from __future__ import annotations

import importlib

import pytest

PINNED = {
    "bus": (
        "AgentInbound AssignAck AssignAcks AssignBatch AssignReply Assignment Bus BusError "
        "Control Decoder EmbeddedNats ErrorReply Heartbeat HeldTask InboxConsumer InboxMessage "
        "Incoming "
        "InvalidSubjectToken MAX_MESSAGE_BYTES MalformedMessage OversizedMessage Payload "
        "Progress ProgressBatch ReportAck ReportBatch ReportReply RequestFailed ServerStartError "
        "TaskFailure TaskResult TraceContext "
        "die_with_parent encode find_binary new_trace subjects"
    ),
    "eventstore": (
        "AnchorError BlobInfo BlobMismatchError BlobNotFoundError BlobStore "
        "CheckpointConflictError ConcurrencyError DuplicateEventError EventQuery "
        "EventRow EventStore EventStoreError GENESIS InvalidEventError JetStreamEventStore "
        "MemoryEventStore NewEvent Projection ProjectionStore ProjectionView Projector "
        "Snapshot SnapshotCheck SqliteEventStore StorageError StoredEvent VerifyReport "
        "digest_of verify_chain"
    ),
    "orchestrator": (
        "AgentSpec Orchestrator OrchestratorError RunState Stack StepSpec TaskState "
        "UnknownEvent UnknownRun VersionGap WorkflowError WorkflowSpec bootstrap "
        "compile_graph decide effects evolve fold load parse pending_effects replay"
    ),
    "agents": "AgentRuntime Handler HandlerNotFound Reply TaskContext TaskError load_handler",
}


@pytest.mark.parametrize("package", sorted(PINNED))
def test_exports_are_pinned_and_resolve(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PINNED[package].split())
    for name in module.__all__:
        assert getattr(module, name) is not None
