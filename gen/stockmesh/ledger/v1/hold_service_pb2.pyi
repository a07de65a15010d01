from stockmesh.ledger.v1 import ledger_pb2 as _ledger_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlaceHoldRequest(_message.Message):
    __slots__ = ("hold_id", "account_id", "order_id", "asset", "amount")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    account_id: str
    order_id: str
    asset: str
    amount: str
    def __init__(self, hold_id: _Optional[str] = ..., account_id: _Optional[str] = ..., order_id: _Optional[str] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class PlaceHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: _ledger_pb2.Hold
    def __init__(self, hold: _Optional[_Union[_ledger_pb2.Hold, _Mapping]] = ...) -> None: ...

class CaptureHoldRequest(_message.Message):
    __slots__ = ("hold_id", "capture_id", "amount", "counter_account_id")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    COUNTER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    capture_id: str
    amount: str
    counter_account_id: str
    def __init__(self, hold_id: _Optional[str] = ..., capture_id: _Optional[str] = ..., amount: _Optional[str] = ..., counter_account_id: _Optional[str] = ...) -> None: ...

class CaptureHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: _ledger_pb2.Hold
    def __init__(self, hold: _Optional[_Union[_ledger_pb2.Hold, _Mapping]] = ...) -> None: ...

class ReleaseHoldRequest(_message.Message):
    __slots__ = ("hold_id",)
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    def __init__(self, hold_id: _Optional[str] = ...) -> None: ...

class ReleaseHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: _ledger_pb2.Hold
    def __init__(self, hold: _Optional[_Union[_ledger_pb2.Hold, _Mapping]] = ...) -> None: ...

class GetHoldRequest(_message.Message):
    __slots__ = ("hold_id",)
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    def __init__(self, hold_id: _Optional[str] = ...) -> None: ...

class GetHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: _ledger_pb2.Hold
    def __init__(self, hold: _Optional[_Union[_ledger_pb2.Hold, _Mapping]] = ...) -> None: ...
