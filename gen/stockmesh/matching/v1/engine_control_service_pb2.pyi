from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HaltSymbolRequest(_message.Message):
    __slots__ = ("symbol", "reason")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    reason: str
    def __init__(self, symbol: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HaltSymbolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeSymbolRequest(_message.Message):
    __slots__ = ("symbol",)
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    def __init__(self, symbol: _Optional[str] = ...) -> None: ...

class ResumeSymbolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetEngineStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SymbolStatus(_message.Message):
    __slots__ = ("symbol", "halted", "last_input_sequence", "book_hash", "halt_reason", "last_closed_day")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    LAST_INPUT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BOOK_HASH_FIELD_NUMBER: _ClassVar[int]
    HALT_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_CLOSED_DAY_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    halted: bool
    last_input_sequence: int
    book_hash: str
    halt_reason: str
    last_closed_day: str
    def __init__(self, symbol: _Optional[str] = ..., halted: _Optional[bool] = ..., last_input_sequence: _Optional[int] = ..., book_hash: _Optional[str] = ..., halt_reason: _Optional[str] = ..., last_closed_day: _Optional[str] = ...) -> None: ...

class GetEngineStatusResponse(_message.Message):
    __slots__ = ("instance_id", "symbols")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    symbols: _containers.RepeatedCompositeFieldContainer[SymbolStatus]
    def __init__(self, instance_id: _Optional[str] = ..., symbols: _Optional[_Iterable[_Union[SymbolStatus, _Mapping]]] = ...) -> None: ...
