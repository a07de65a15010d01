from stockmesh.matching.v1 import price_level_pb2 as _price_level_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetOrderBookRequest(_message.Message):
    __slots__ = ("symbol", "depth")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    depth: int
    def __init__(self, symbol: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class GetOrderBookResponse(_message.Message):
    __slots__ = ("bids", "asks", "sequence")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[_price_level_pb2.PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[_price_level_pb2.PriceLevel]
    sequence: int
    def __init__(self, bids: _Optional[_Iterable[_Union[_price_level_pb2.PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[_price_level_pb2.PriceLevel, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...
