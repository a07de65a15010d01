import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stockmesh.ledger.v1 import ledger_pb2 as _ledger_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HoldTransferStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_TRANSFER_STATUS_UNSPECIFIED: _ClassVar[HoldTransferStatus]
    HOLD_TRANSFER_STATUS_PENDING: _ClassVar[HoldTransferStatus]
    HOLD_TRANSFER_STATUS_COMPLETED: _ClassVar[HoldTransferStatus]
    HOLD_TRANSFER_STATUS_CANCELLED: _ClassVar[HoldTransferStatus]
HOLD_TRANSFER_STATUS_UNSPECIFIED: HoldTransferStatus
HOLD_TRANSFER_STATUS_PENDING: HoldTransferStatus
HOLD_TRANSFER_STATUS_COMPLETED: HoldTransferStatus
HOLD_TRANSFER_STATUS_CANCELLED: HoldTransferStatus

class PlaceHoldRequest(_message.Message):
    __slots__ = ("hold_id", "account_id", "order_id", "asset", "amount", "client_key", "answer_kept_key")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_KEPT_KEY_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    account_id: str
    order_id: str
    asset: str
    amount: str
    client_key: str
    answer_kept_key: bool
    def __init__(self, hold_id: _Optional[str] = ..., account_id: _Optional[str] = ..., order_id: _Optional[str] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., client_key: _Optional[str] = ..., answer_kept_key: _Optional[bool] = ...) -> None: ...

class PlaceHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: _ledger_pb2.Hold
    def __init__(self, hold: _Optional[_Union[_ledger_pb2.Hold, _Mapping]] = ...) -> None: ...

class AwaitExecutionsRequest(_message.Message):
    __slots__ = ("account_ids",)
    ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    account_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, account_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AwaitExecutionsResponse(_message.Message):
    __slots__ = ("retry_account_ids",)
    RETRY_ACCOUNT_IDS_FIELD_NUMBER: _ClassVar[int]
    retry_account_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, retry_account_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PlaceHoldsRequest(_message.Message):
    __slots__ = ("holds",)
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    holds: _containers.RepeatedCompositeFieldContainer[PlaceHoldRequest]
    def __init__(self, holds: _Optional[_Iterable[_Union[PlaceHoldRequest, _Mapping]]] = ...) -> None: ...

class PlaceHoldsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PlaceHoldResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PlaceHoldResult, _Mapping]]] = ...) -> None: ...

class PlaceHoldResult(_message.Message):
    __slots__ = ("hold", "error")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    hold: _ledger_pb2.Hold
    error: HoldError
    def __init__(self, hold: _Optional[_Union[_ledger_pb2.Hold, _Mapping]] = ..., error: _Optional[_Union[HoldError, _Mapping]] = ...) -> None: ...

class HoldError(_message.Message):
    __slots__ = ("code", "reason", "message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

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

class TransferHoldRequest(_message.Message):
    __slots__ = ("from_hold_id", "to_hold_id", "order_id", "account_id", "asset", "unit_amount", "reserve_amount", "client_key")
    FROM_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    TO_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RESERVE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    from_hold_id: str
    to_hold_id: str
    order_id: str
    account_id: str
    asset: str
    unit_amount: str
    reserve_amount: str
    client_key: str
    def __init__(self, from_hold_id: _Optional[str] = ..., to_hold_id: _Optional[str] = ..., order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., asset: _Optional[str] = ..., unit_amount: _Optional[str] = ..., reserve_amount: _Optional[str] = ..., client_key: _Optional[str] = ...) -> None: ...

class RegisterClientKeysRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ClientKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ClientKey, _Mapping]]] = ...) -> None: ...

class ClientKey(_message.Message):
    __slots__ = ("account_id", "client_key", "order_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    client_key: str
    order_id: str
    def __init__(self, account_id: _Optional[str] = ..., client_key: _Optional[str] = ..., order_id: _Optional[str] = ...) -> None: ...

class RegisterClientKeysResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClientKeyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ClientKeyResult, _Mapping]]] = ...) -> None: ...

class ClientKeyResult(_message.Message):
    __slots__ = ("holder_order_id", "holder_hold_id", "holder_hold_status")
    HOLDER_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_HOLD_STATUS_FIELD_NUMBER: _ClassVar[int]
    holder_order_id: str
    holder_hold_id: str
    holder_hold_status: str
    def __init__(self, holder_order_id: _Optional[str] = ..., holder_hold_id: _Optional[str] = ..., holder_hold_status: _Optional[str] = ...) -> None: ...

class TransferHoldResponse(_message.Message):
    __slots__ = ("transfer",)
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    transfer: HoldTransfer
    def __init__(self, transfer: _Optional[_Union[HoldTransfer, _Mapping]] = ...) -> None: ...

class HoldTransfer(_message.Message):
    __slots__ = ("from_hold_id", "to_hold_id", "order_id", "asset", "unit_amount", "reserve_amount", "reserve_hold_id", "status", "moved_amount", "new_amount")
    FROM_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    TO_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RESERVE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RESERVE_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MOVED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    NEW_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    from_hold_id: str
    to_hold_id: str
    order_id: str
    asset: str
    unit_amount: str
    reserve_amount: str
    reserve_hold_id: str
    status: HoldTransferStatus
    moved_amount: str
    new_amount: str
    def __init__(self, from_hold_id: _Optional[str] = ..., to_hold_id: _Optional[str] = ..., order_id: _Optional[str] = ..., asset: _Optional[str] = ..., unit_amount: _Optional[str] = ..., reserve_amount: _Optional[str] = ..., reserve_hold_id: _Optional[str] = ..., status: _Optional[_Union[HoldTransferStatus, str]] = ..., moved_amount: _Optional[str] = ..., new_amount: _Optional[str] = ...) -> None: ...

class CancelHoldTransferRequest(_message.Message):
    __slots__ = ("to_hold_id",)
    TO_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    to_hold_id: str
    def __init__(self, to_hold_id: _Optional[str] = ...) -> None: ...

class CancelHoldTransferResponse(_message.Message):
    __slots__ = ("transfer",)
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    transfer: HoldTransfer
    def __init__(self, transfer: _Optional[_Union[HoldTransfer, _Mapping]] = ...) -> None: ...

class ListUncheckedHoldsRequest(_message.Message):
    __slots__ = ("older_than_seconds", "limit", "after_created_at", "after_hold_id", "orphan_age_seconds")
    OLDER_THAN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    AFTER_HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    ORPHAN_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    older_than_seconds: int
    limit: int
    after_created_at: _timestamp_pb2.Timestamp
    after_hold_id: str
    orphan_age_seconds: int
    def __init__(self, older_than_seconds: _Optional[int] = ..., limit: _Optional[int] = ..., after_created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., after_hold_id: _Optional[str] = ..., orphan_age_seconds: _Optional[int] = ...) -> None: ...

class ListUncheckedHoldsResponse(_message.Message):
    __slots__ = ("holds", "past_orphan_age")
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    PAST_ORPHAN_AGE_FIELD_NUMBER: _ClassVar[int]
    holds: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.Hold]
    past_orphan_age: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, holds: _Optional[_Iterable[_Union[_ledger_pb2.Hold, _Mapping]]] = ..., past_orphan_age: _Optional[_Iterable[bool]] = ...) -> None: ...

class MarkHoldsCheckedRequest(_message.Message):
    __slots__ = ("hold_ids",)
    HOLD_IDS_FIELD_NUMBER: _ClassVar[int]
    hold_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hold_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MarkHoldsCheckedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
