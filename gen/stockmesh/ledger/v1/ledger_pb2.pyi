import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stockmesh.order.v1 import order_pb2 as _order_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActivityType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVITY_TYPE_UNSPECIFIED: _ClassVar[ActivityType]
    ACTIVITY_TYPE_DEPOSIT: _ClassVar[ActivityType]
    ACTIVITY_TYPE_WITHDRAWAL: _ClassVar[ActivityType]
    ACTIVITY_TYPE_HOLD: _ClassVar[ActivityType]
    ACTIVITY_TYPE_HOLD_RELEASE: _ClassVar[ActivityType]
    ACTIVITY_TYPE_FILL: _ClassVar[ActivityType]
    ACTIVITY_TYPE_SETTLEMENT: _ClassVar[ActivityType]

class HoldStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_STATUS_UNSPECIFIED: _ClassVar[HoldStatus]
    HOLD_STATUS_PENDING: _ClassVar[HoldStatus]
    HOLD_STATUS_CAPTURED: _ClassVar[HoldStatus]
    HOLD_STATUS_RELEASED: _ClassVar[HoldStatus]
    HOLD_STATUS_TRANSFERRED: _ClassVar[HoldStatus]
ACTIVITY_TYPE_UNSPECIFIED: ActivityType
ACTIVITY_TYPE_DEPOSIT: ActivityType
ACTIVITY_TYPE_WITHDRAWAL: ActivityType
ACTIVITY_TYPE_HOLD: ActivityType
ACTIVITY_TYPE_HOLD_RELEASE: ActivityType
ACTIVITY_TYPE_FILL: ActivityType
ACTIVITY_TYPE_SETTLEMENT: ActivityType
HOLD_STATUS_UNSPECIFIED: HoldStatus
HOLD_STATUS_PENDING: HoldStatus
HOLD_STATUS_CAPTURED: HoldStatus
HOLD_STATUS_RELEASED: HoldStatus
HOLD_STATUS_TRANSFERRED: HoldStatus

class CashBalance(_message.Message):
    __slots__ = ("total", "available", "held", "settled", "unsettled")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    UNSETTLED_FIELD_NUMBER: _ClassVar[int]
    total: str
    available: str
    held: str
    settled: str
    unsettled: str
    def __init__(self, total: _Optional[str] = ..., available: _Optional[str] = ..., held: _Optional[str] = ..., settled: _Optional[str] = ..., unsettled: _Optional[str] = ...) -> None: ...

class Position(_message.Message):
    __slots__ = ("symbol", "quantity", "available", "held", "average_cost", "market_price", "market_value", "unrealized_pnl")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_COST_FIELD_NUMBER: _ClassVar[int]
    MARKET_PRICE_FIELD_NUMBER: _ClassVar[int]
    MARKET_VALUE_FIELD_NUMBER: _ClassVar[int]
    UNREALIZED_PNL_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    quantity: int
    available: int
    held: int
    average_cost: str
    market_price: str
    market_value: str
    unrealized_pnl: str
    def __init__(self, symbol: _Optional[str] = ..., quantity: _Optional[int] = ..., available: _Optional[int] = ..., held: _Optional[int] = ..., average_cost: _Optional[str] = ..., market_price: _Optional[str] = ..., market_value: _Optional[str] = ..., unrealized_pnl: _Optional[str] = ...) -> None: ...

class Portfolio(_message.Message):
    __slots__ = ("account_id", "cash", "positions", "equity", "open_orders", "as_of", "open_orders_truncated")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CASH_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    EQUITY_FIELD_NUMBER: _ClassVar[int]
    OPEN_ORDERS_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    OPEN_ORDERS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    cash: CashBalance
    positions: _containers.RepeatedCompositeFieldContainer[Position]
    equity: str
    open_orders: _containers.RepeatedCompositeFieldContainer[_order_pb2.Order]
    as_of: _timestamp_pb2.Timestamp
    open_orders_truncated: bool
    def __init__(self, account_id: _Optional[str] = ..., cash: _Optional[_Union[CashBalance, _Mapping]] = ..., positions: _Optional[_Iterable[_Union[Position, _Mapping]]] = ..., equity: _Optional[str] = ..., open_orders: _Optional[_Iterable[_Union[_order_pb2.Order, _Mapping]]] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., open_orders_truncated: _Optional[bool] = ...) -> None: ...

class Activity(_message.Message):
    __slots__ = ("activity_id", "type", "asset", "amount", "description", "created_at", "reference", "settled", "settled_at")
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    SETTLED_AT_FIELD_NUMBER: _ClassVar[int]
    activity_id: str
    type: ActivityType
    asset: str
    amount: str
    description: str
    created_at: _timestamp_pb2.Timestamp
    reference: str
    settled: bool
    settled_at: _timestamp_pb2.Timestamp
    def __init__(self, activity_id: _Optional[str] = ..., type: _Optional[_Union[ActivityType, str]] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., description: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reference: _Optional[str] = ..., settled: _Optional[bool] = ..., settled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Hold(_message.Message):
    __slots__ = ("hold_id", "order_id", "asset", "amount", "captured", "released", "status", "created_at", "transferred_to")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRANSFERRED_TO_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    order_id: str
    asset: str
    amount: str
    captured: str
    released: str
    status: HoldStatus
    created_at: _timestamp_pb2.Timestamp
    transferred_to: str
    def __init__(self, hold_id: _Optional[str] = ..., order_id: _Optional[str] = ..., asset: _Optional[str] = ..., amount: _Optional[str] = ..., captured: _Optional[str] = ..., released: _Optional[str] = ..., status: _Optional[_Union[HoldStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transferred_to: _Optional[str] = ...) -> None: ...
