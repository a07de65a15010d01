import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CandleInterval(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDLE_INTERVAL_UNSPECIFIED: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_1S: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_1M: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_5M: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_15M: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_1H: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_1D: _ClassVar[CandleInterval]
CANDLE_INTERVAL_UNSPECIFIED: CandleInterval
CANDLE_INTERVAL_1S: CandleInterval
CANDLE_INTERVAL_1M: CandleInterval
CANDLE_INTERVAL_5M: CandleInterval
CANDLE_INTERVAL_15M: CandleInterval
CANDLE_INTERVAL_1H: CandleInterval
CANDLE_INTERVAL_1D: CandleInterval

class Symbol(_message.Message):
    __slots__ = ("symbol", "name", "tick_size", "reference_price")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TICK_SIZE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_PRICE_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    name: str
    tick_size: str
    reference_price: str
    def __init__(self, symbol: _Optional[str] = ..., name: _Optional[str] = ..., tick_size: _Optional[str] = ..., reference_price: _Optional[str] = ...) -> None: ...

class Quote(_message.Message):
    __slots__ = ("symbol", "bid_price", "bid_size", "ask_price", "ask_size", "last_price", "last_size", "volume", "sequence", "time", "halted")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_SIZE_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_PRICE_FIELD_NUMBER: _ClassVar[int]
    LAST_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    HALTED_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    bid_price: str
    bid_size: int
    ask_price: str
    ask_size: int
    last_price: str
    last_size: int
    volume: int
    sequence: int
    time: _timestamp_pb2.Timestamp
    halted: bool
    def __init__(self, symbol: _Optional[str] = ..., bid_price: _Optional[str] = ..., bid_size: _Optional[int] = ..., ask_price: _Optional[str] = ..., ask_size: _Optional[int] = ..., last_price: _Optional[str] = ..., last_size: _Optional[int] = ..., volume: _Optional[int] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., halted: _Optional[bool] = ...) -> None: ...

class Candle(_message.Message):
    __slots__ = ("start_time", "open", "high", "low", "close", "volume", "trade_count", "vwap", "is_final")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    TRADE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VWAP_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    open: str
    high: str
    low: str
    close: str
    volume: int
    trade_count: int
    vwap: str
    is_final: bool
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., open: _Optional[str] = ..., high: _Optional[str] = ..., low: _Optional[str] = ..., close: _Optional[str] = ..., volume: _Optional[int] = ..., trade_count: _Optional[int] = ..., vwap: _Optional[str] = ..., is_final: _Optional[bool] = ...) -> None: ...
