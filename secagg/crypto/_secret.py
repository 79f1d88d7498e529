"""Guard rails shared by every object that holds secret key material."""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = ["NoExportMixin"]


class NoExportMixin:
    """Refuse pickling and copying, so a secret only leaves through an explicit ``private_bytes()``.

    Subclasses must also define ``__repr__`` without the secret.
    """

    __slots__ = ()

    def _refuse(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} holds secret key material and cannot be pickled or copied; "
            "call private_bytes() explicitly if the key really must leave this object"
        )

    def __reduce__(self) -> NoReturn:
        self._refuse()

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        self._refuse()

    def __getstate__(self) -> NoReturn:
        self._refuse()

    def __copy__(self) -> NoReturn:
        self._refuse()

    def __deepcopy__(self, memo: Any) -> NoReturn:
        self._refuse()
