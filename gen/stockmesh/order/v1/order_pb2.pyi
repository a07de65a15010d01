import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stockmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderRejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_REJECT_REASON_UNSPECIFIED: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_INSUFFICIENT_FUNDS: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_INSUFFICIENT_SHARES: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_MARKET_CLOSED: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_SYMBOL_HALTED: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_PRICE_OUT_OF_COLLAR: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_NO_LIQUIDITY: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_FOK_NOT_FILLABLE: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_SELF_TRADE: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_ORDER_NOT_ACTIVE: _ClassVar[OrderRejectReason]
    ORDER_REJECT_REASON_INTERNAL: _ClassVar[OrderRejectReason]

class OrderEndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_END_REASON_UNSPECIFIED: _ClassVar[OrderEndReason]
    ORDER_END_REASON_CUSTOMER_CANCEL: _ClassVar[OrderEndReason]
    ORDER_END_REASON_IOC_REMAINDER: _ClassVar[OrderEndReason]
    ORDER_END_REASON_MARKET_REMAINDER: _ClassVar[OrderEndReason]
    ORDER_END_REASON_NO_LIQUIDITY: _ClassVar[OrderEndReason]
    ORDER_END_REASON_SELF_TRADE: _ClassVar[OrderEndReason]
    ORDER_END_REASON_FOK_NOT_FILLABLE: _ClassVar[OrderEndReason]
    ORDER_END_REASON_REPLACED: _ClassVar[OrderEndReason]
    ORDER_END_REASON_SESSION_CLOSE: _ClassVar[OrderEndReason]
ORDER_REJECT_REASON_UNSPECIFIED: OrderRejectReason
ORDER_REJECT_REASON_INSUFFICIENT_FUNDS: OrderRejectReason
ORDER_REJECT_REASON_INSUFFICIENT_SHARES: OrderRejectReason
ORDER_REJECT_REASON_MARKET_CLOSED: OrderRejectReason
ORDER_REJECT_REASON_SYMBOL_HALTED: OrderRejectReason
ORDER_REJECT_REASON_PRICE_OUT_OF_COLLAR: OrderRejectReason
ORDER_REJECT_REASON_NO_LIQUIDITY: OrderRejectReason
ORDER_REJECT_REASON_FOK_NOT_FILLABLE: OrderRejectReason
ORDER_REJECT_REASON_SELF_TRADE: OrderRejectReason
ORDER_REJECT_REASON_ORDER_NOT_ACTIVE: OrderRejectReason
ORDER_REJECT_REASON_INTERNAL: OrderRejectReason
ORDER_END_REASON_UNSPECIFIED: OrderEndReason
ORDER_END_REASON_CUSTOMER_CANCEL: OrderEndReason
ORDER_END_REASON_IOC_REMAINDER: OrderEndReason
ORDER_END_REASON_MARKET_REMAINDER: OrderEndReason
ORDER_END_REASON_NO_LIQUIDITY: OrderEndReason
ORDER_END_REASON_SELF_TRADE: OrderEndReason
ORDER_END_REASON_FOK_NOT_FILLABLE: OrderEndReason
ORDER_END_REASON_REPLACED: OrderEndReason
ORDER_END_REASON_SESSION_CLOSE: OrderEndReason

class Order(_message.Message):
    __slots__ = ("order_id", "client_order_id", "account_id", "symbol", "side", "type", "time_in_force", "quantity", "limit_price", "stop_price", "status", "filled_quantity", "average_fill_price", "reject_reason", "reject_message", "replaced_by", "created_at", "updated_at", "replaces", "end_reason", "end_message", "triggered_at")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FILLED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_FILL_PRICE_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    REJECT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REPLACED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLACES_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    END_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRIGGERED_AT_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    client_order_id: str
    account_id: str
    symbol: str
    side: _common_pb2.Side
    type: _common_pb2.OrderType
    time_in_force: _common_pb2.TimeInForce
    quantity: int
    limit_price: str
    stop_price: str
    status: _common_pb2.OrderStatus
    filled_quantity: int
    average_fill_price: str
    reject_reason: OrderRejectReason
    reject_message: str
    replaced_by: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    replaces: str
    end_reason: OrderEndReason
    end_message: str
    triggered_at: _timestamp_pb2.Timestamp
    def __init__(self, order_id: _Optional[str] = ..., client_order_id: _Optional[str] = ..., account_id: _Optional[str] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[_common_pb2.Side, str]] = ..., type: _Optional[_Union[_common_pb2.OrderType, str]] = ..., time_in_force: _Optional[_Union[_common_pb2.TimeInForce, str]] = ..., quantity: _Optional[int] = ..., limit_price: _Optional[str] = ..., stop_price: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.OrderStatus, str]] = ..., filled_quantity: _Optional[int] = ..., average_fill_price: _Optional[str] = ..., reject_reason: _Optional[_Union[OrderRejectReason, str]] = ..., reject_message: _Optional[str] = ..., replaced_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replaces: _Optional[str] = ..., end_reason: _Optional[_Union[OrderEndReason, str]] = ..., end_message: _Optional[str] = ..., triggered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Fill(_message.Message):
    __slots__ = ("fill_id", "price", "quantity", "executed_at")
    FILL_ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EXECUTED_AT_FIELD_NUMBER: _ClassVar[int]
    fill_id: str
    price: str
    quantity: int
    executed_at: _timestamp_pb2.Timestamp
    def __init__(self, fill_id: _Optional[str] = ..., price: _Optional[str] = ..., quantity: _Optional[int] = ..., executed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class OrderUpdate(_message.Message):
    __slots__ = ("sequence", "order", "fill", "event_time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    order: Order
    fill: Fill
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., order: _Optional[_Union[Order, _Mapping]] = ..., fill: _Optional[_Union[Fill, _Mapping]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
