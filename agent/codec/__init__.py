"""The RFC 9132 codec: typed (pyangbind) messages <-> CBOR and JSON.

Use ``decode_cbor``/``decode_json`` on what arrives and ``Message.to_cbor``/``to_json`` on what
leaves; ``Message.new(MessageType.X)`` starts a message whose fields are set through the
generated typed objects (``msg.signal.scope.add()`` ...).
"""

from .errors import CodecError
from .messages import (
    Direction,
    Message,
    MessageType,
    cbor_to_json,
    decode_cbor,
    decode_json,
    json_to_cbor,
    new_root,
)

__all__ = ["CodecError", "Direction", "Message", "MessageType", "cbor_to_json", "decode_cbor",
           "decode_json", "json_to_cbor", "new_root"]
