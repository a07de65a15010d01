import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stockmesh.common.v1 import common_pb2 as _common_pb2
from stockmesh.matching.v1 import price_level_pb2 as _price_level_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecutionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_TYPE_UNSPECIFIED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_ACCEPTED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_FILL: _ClassVar[ExecutionType]
    EXECUTION_TYPE_CANCELLED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_EXPIRED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_REJECTED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_REPLACED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_TRIGGERED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_CANCEL_REJECTED: _ClassVar[ExecutionType]
EXECUTION_TYPE_UNSPECIFIED: ExecutionType
EXECUTION_TYPE_ACCEPTED: ExecutionType
EXECUTION_TYPE_FILL: ExecutionType
EXECUTION_TYPE_CANCELLED: ExecutionType
EXECUTION_TYPE_EXPIRED: ExecutionType
EXECUTION_TYPE_REJECTED: ExecutionType
EXECUTION_TYPE_REPLACED: ExecutionType
EXECUTION_TYPE_TRIGGERED: ExecutionType
EXECUTION_TYPE_CANCEL_REJECTED: ExecutionType

class EngineCommand(_message.Message):
    __slots__ = ("command_id", "symbol", "new_order", "cancel_order", "replace_order", "session_close", "halt", "resume")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    NEW_ORDER_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    REPLACE_ORDER_FIELD_NUMBER: _ClassVar[int]
    SESSION_CLOSE_FIELD_NUMBER: _ClassVar[int]
    HALT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    symbol: str
    new_order: NewOrder
    cancel_order: CancelOrder
    replace_order: ReplaceOrder
    session_close: SessionClose
    halt: Halt
    resume: Resume
    def __init__(self, command_id: _Optional[str] = ..., symbol: _Optional[str] = ..., new_order: _Optional[_Union[NewOrder, _Mapping]] = ..., cancel_order: _Optional[_Union[CancelOrder, _Mapping]] = ..., replace_order: _Optional[_Union[ReplaceOrder, _Mapping]] = ..., session_close: _Optional[_Union[SessionClose, _Mapping]] = ..., halt: _Optional[_Union[Halt, _Mapping]] = ..., resume: _Optional[_Union[Resume, _Mapping]] = ...) -> None: ...

class Halt(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Resume(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionClose(_message.Message):
    __slots__ = ("trading_day", "queued_at")
    TRADING_DAY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    trading_day: str
    queued_at: _timestamp_pb2.Timestamp
    def __init__(self, trading_day: _Optional[str] = ..., queued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class NewOrder(_message.Message):
    __slots__ = ("order_id", "account_id", "side", "type", "time_in_force", "quantity", "limit_price", "stop_price", "collar_price", "accepted_at")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    COLLAR_PRICE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    account_id: str
    side: _common_pb2.Side
    type: _common_pb2.OrderType
    time_in_force: _common_pb2.TimeInForce
    quantity: int
    limit_price: str
    stop_price: str
    collar_price: str
    accepted_at: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., side: _Optional[_Union[_common_pb2.Side, str]] = ..., type: _Optional[_Union[_common_pb2.OrderType, str]] = ..., time_in_force: _Optional[_Union[_common_pb2.TimeInForce, str]] = ..., quantity: _Optional[int] = ..., limit_price: _Optional[str] = ..., stop_price: _Optional[str] = ..., collar_price: _Optional[str] = ..., accepted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CancelOrder(_message.Message):
    __slots__ = ("order_id", "account_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    account_id: str
    def __init__(self, order_id: _Optional[str] = ..., account_id: _Optional[str] = ...) -> None: ...

class ReplaceOrder(_message.Message):
    __slots__ = ("order_id", "new_order_id", "account_id", "quantity", "limit_price", "stop_price", "collar_price")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    COLLAR_PRICE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    new_order_id: str
    account_id: str
    quantity: int
    limit_price: str
    stop_price: str
    collar_price: str
    def __init__(self, order_id: _Optional[str] = ..., new_order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., quantity: _Optional[int] = ..., limit_price: _Optional[str] = ..., stop_price: _Optional[str] = ..., collar_price: _Optional[str] = ...) -> None: ...

class Execution(_message.Message):
    __slots__ = ("execution_id", "symbol", "type", "order_id", "account_id", "counter_order_id", "counter_account_id", "side", "price", "quantity", "leaves_quantity", "reason", "input_sequence", "time", "counter_leaves_quantity", "new_order_id", "kept_priority")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTER_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    LEAVES_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INPUT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    COUNTER_LEAVES_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    NEW_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    KEPT_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    symbol: str
    type: ExecutionType
    order_id: str
    account_id: str
    counter_order_id: str
    counter_account_id: str
    side: _common_pb2.Side
    price: str
    quantity: int
    leaves_quantity: int
    reason: str
    input_sequence: int
    time: _timestamp_pb2.Timestamp
    counter_leaves_quantity: int
    new_order_id: str
    kept_priority: bool
    def __init__(self, execution_id: _Optional[str] = ..., symbol: _Optional[str] = ..., type: _Optional[_Union[ExecutionType, str]] = ..., order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., counter_order_id: _Optional[str] = ..., counter_account_id: _Optional[str] = ..., side: _Optional[_Union[_common_pb2.Side, str]] = ..., price: _Optional[str] = ..., quantity: _Optional[int] = ..., leaves_quantity: _Optional[int] = ..., reason: _Optional[str] = ..., input_sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., counter_leaves_quantity: _Optional[int] = ..., new_order_id: _Optional[str] = ..., kept_priority: _Optional[bool] = ...) -> None: ...

class MarketDataEvent(_message.Message):
    __slots__ = ("symbol", "sequence", "time", "trade_price", "trade_quantity", "bid_price", "bid_size", "ask_price", "ask_size", "bids", "asks", "last_price", "volume", "halted")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TRADE_PRICE_FIELD_NUMBER: _ClassVar[int]
    TRADE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_SIZE_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    trade_price: str
    trade_quantity: int
    bid_price: str
    bid_size: int
    ask_price: str
    ask_size: int
    bids: _containers.RepeatedCompositeFieldContainer[_price_level_pb2.PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[_price_level_pb2.PriceLevel]
    last_price: str
    volume: int
    halted: bool
    def __init__(self, symbol: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trade_price: _Optional[str] = ..., trade_quantity: _Optional[int] = ..., bid_price: _Optional[str] = ..., bid_size: _Optional[int] = ..., ask_price: _Optional[str] = ..., ask_size: _Optional[int] = ..., bids: _Optional[_Iterable[_Union[_price_level_pb2.PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[_price_level_pb2.PriceLevel, _Mapping]]] = ..., last_price: _Optional[str] = ..., volume: _Optional[int] = ..., halted: _Optional[bool] = ...) -> None: ...
