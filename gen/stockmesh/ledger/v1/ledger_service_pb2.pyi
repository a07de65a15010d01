from stockmesh.ledger.v1 import ledger_pb2 as _ledger_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DepositRequest(_message.Message):
    __slots__ = ("amount", "idempotency_key")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    amount: str
    idempotency_key: str
    def __init__(self, amount: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class DepositResponse(_message.Message):
    __slots__ = ("cash",)
    CASH_FIELD_NUMBER: _ClassVar[int]
    cash: _ledger_pb2.CashBalance
    def __init__(self, cash: _Optional[_Union[_ledger_pb2.CashBalance, _Mapping]] = ...) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("amount", "idempotency_key")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    amount: str
    idempotency_key: str
    def __init__(self, amount: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class WithdrawResponse(_message.Message):
    __slots__ = ("cash",)
    CASH_FIELD_NUMBER: _ClassVar[int]
    cash: _ledger_pb2.CashBalance
    def __init__(self, cash: _Optional[_Union[_ledger_pb2.CashBalance, _Mapping]] = ...) -> None: ...

class GetPortfolioRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPortfolioResponse(_message.Message):
    __slots__ = ("portfolio",)
    PORTFOLIO_FIELD_NUMBER: _ClassVar[int]
    portfolio: _ledger_pb2.Portfolio
    def __init__(self, portfolio: _Optional[_Union[_ledger_pb2.Portfolio, _Mapping]] = ...) -> None: ...

class ListActivitiesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListActivitiesResponse(_message.Message):
    __slots__ = ("activities", "next_page_token")
    ACTIVITIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    activities: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.Activity]
    next_page_token: str
    def __init__(self, activities: _Optional[_Iterable[_Union[_ledger_pb2.Activity, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListHoldsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHoldsResponse(_message.Message):
    __slots__ = ("holds", "next_page_token")
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    holds: _containers.RepeatedCompositeFieldContainer[_ledger_pb2.Hold]
    next_page_token: str
    def __init__(self, holds: _Optional[_Iterable[_Union[_ledger_pb2.Hold, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
