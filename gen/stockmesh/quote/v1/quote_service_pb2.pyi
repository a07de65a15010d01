import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from stockmesh.quote.v1 import quote_pb2 as _quote_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListSymbolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSymbolsResponse(_message.Message):
    __slots__ = ("symbols",)
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedCompositeFieldContainer[_quote_pb2.Symbol]
    def __init__(self, symbols: _Optional[_Iterable[_Union[_quote_pb2.Symbol, _Mapping]]] = ...) -> None: ...

class GetQuoteRequest(_message.Message):
    __slots__ = ("symbol",)
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    def __init__(self, symbol: _Optional[str] = ...) -> None: ...

class GetQuoteResponse(_message.Message):
    __slots__ = ("quote",)
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    quote: _quote_pb2.Quote
    def __init__(self, quote: _Optional[_Union[_quote_pb2.Quote, _Mapping]] = ...) -> None: ...

class StreamQuotesRequest(_message.Message):
    __slots__ = ("symbols",)
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, symbols: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCandlesRequest(_message.Message):
    __slots__ = ("symbol", "interval", "start_time", "end_time", "page_size", "page_token")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    interval: _quote_pb2.CandleInterval
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, symbol: _Optional[str] = ..., interval: _Optional[_Union[_quote_pb2.CandleInterval, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetCandlesResponse(_message.Message):
    __slots__ = ("candles", "next_page_token")
    CANDLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    candles: _containers.RepeatedCompositeFieldContainer[_quote_pb2.Candle]
    next_page_token: str
    def __init__(self, candles: _Optional[_Iterable[_Union[_quote_pb2.Candle, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
