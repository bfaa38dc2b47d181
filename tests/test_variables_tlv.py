"""``$proxy_protocol_tlv_NAME``: the names a template accepts are the codec's."""

from __future__ import annotations

import pytest

from tlsgw.proxy import proxyproto
from tlsgw.variables import TLV_NAME, Template, TemplateError

NAMES = [*proxyproto.TLV_NAMES, *(f"ssl_{n}" for n in proxyproto.SSL_TLV_NAMES), "ssl_verify",
         "0x01", "0xE0", "0xf", "ssl_0x21", "alpnx", "ssl_foo", "0x", "0xzz", "0x100", "crc32c",
         "ssl_", "ssl_ssl", ""]


@pytest.mark.parametrize("name", NAMES)
def test_template_names_agree_with_the_codec(name):
    assert bool(TLV_NAME.fullmatch(name)) == proxyproto.known_tlv_name(name)


def test_unknown_tlv_is_a_template_error_as_nginx_words_it():
    Template("$proxy_protocol_tlv_authority $proxy_protocol_tlv_ssl_cn $proxy_protocol_tlv_0xE5")
    with pytest.raises(TemplateError, match='unknown PROXY protocol TLV "crc32c"'):
        Template("$proxy_protocol_tlv_crc32c")
