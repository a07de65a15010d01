from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunSettlementRequest(_message.Message):
    __slots__ = ("date", "before_close")
    DATE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_CLOSE_FIELD_NUMBER: _ClassVar[int]
    date: str
    before_close: bool
    def __init__(self, date: _Optional[str] = ..., before_close: _Optional[bool] = ...) -> None: ...

class Discrepancy(_message.Message):
    __slots__ = ("kind", "reference", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    reference: str
    detail: str
    def __init__(self, kind: _Optional[str] = ..., reference: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RunSettlementResponse(_message.Message):
    __slots__ = ("fills_settled", "fills_already_settled", "discrepancies", "reconciled_against", "amount_settled")
    FILLS_SETTLED_FIELD_NUMBER: _ClassVar[int]
    FILLS_ALREADY_SETTLED_FIELD_NUMBER: _ClassVar[int]
    DISCREPANCIES_FIELD_NUMBER: _ClassVar[int]
    RECONCILED_AGAINST_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_SETTLED_FIELD_NUMBER: _ClassVar[int]
    fills_settled: int
    fills_already_settled: int
    discrepancies: _containers.RepeatedCompositeFieldContainer[Discrepancy]
    reconciled_against: str
    amount_settled: str
    def __init__(self, fills_settled: _Optional[int] = ..., fills_already_settled: _Optional[int] = ..., discrepancies: _Optional[_Iterable[_Union[Discrepancy, _Mapping]]] = ..., reconciled_against: _Optional[str] = ..., amount_settled: _Optional[str] = ...) -> None: ...

class TrimJournalRequest(_message.Message):
    __slots__ = ("before", "dry_run")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    before: str
    dry_run: bool
    def __init__(self, before: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class TrimJournalResponse(_message.Message):
    __slots__ = ("first_sequence", "last_sequence", "cut_sequence", "purged", "held_back_by")
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CUT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PURGED_FIELD_NUMBER: _ClassVar[int]
    HELD_BACK_BY_FIELD_NUMBER: _ClassVar[int]
    first_sequence: int
    last_sequence: int
    cut_sequence: int
    purged: int
    held_back_by: str
    def __init__(self, first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., cut_sequence: _Optional[int] = ..., purged: _Optional[int] = ..., held_back_by: _Optional[str] = ...) -> None: ...
