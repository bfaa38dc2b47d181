"""The configuration model: frozen, typed from the schema, hashable listen specs, a source map."""

from __future__ import annotations

import dataclasses
import inspect
import textwrap

import pytest

from tlsgw.config import model, schema
from tlsgw.config.load import load_config


def _annotation(d: schema.Directive) -> str:
    """What the settings field of a directive is: its parser's return type, ``| None`` where
    the directive has no default."""
    a = inspect.signature(d.parse).return_annotation
    return a if d.default is not None or "None" in a else f"{a} | None"


def test_server_settings_have_one_field_per_inherited_directive_typed_as_its_parser():
    """The settings class is written out (so type checkers see it) and held to the schema
    here: a directive added to the table without its field, or with another type, fails."""
    fields = {f.name: f.type for f in dataclasses.fields(model.ServerSettings)}
    assert list(fields) == [d.name for d in schema.INHERITED]
    for d in schema.INHERITED:
        assert fields[d.name] == _annotation(d), d.name


def test_main_settings_add_the_top_level_only_directives():
    own = [f.name for f in dataclasses.fields(model.MainSettings)][len(schema.INHERITED):]
    main_only = [d for d in schema.BY_CONTEXT["main"].values() if d.parse and not d.inherited]
    assert own == [d.name for d in main_only]
    types = {f.name: f.type for f in dataclasses.fields(model.MainSettings)}
    for d in main_only:
        assert types[d.name] == _annotation(d), d.name


def test_listen_and_upstream_server_fields_are_their_parameters():
    listen = {f.name for f in dataclasses.fields(model.ListenSpec)} - {"address"} | {"ssl", "proxy_protocol", "default_server"}
    assert listen == {p.field for p in schema.LISTEN_PARAMS if p.field}
    peer = {f.name for f in dataclasses.fields(model.UpstreamServer)} - {"text", "addresses", "line"}
    assert peer == {p.name for p in schema.PEER_PARAMS}
    for p in schema.LISTEN_PARAMS + schema.PEER_PARAMS:
        cls = model.Listen if p.contexts == ("listen",) else model.UpstreamServer
        if p.field and p.parse is not None and p.default is not None:
            default = {f.name: f.default for f in dataclasses.fields(cls)}[p.field]
            assert default == p.default_value(), p.name  # the model's default is the schema's


CONFIG = """\
proxy_timeout: 20s
upstreams:
  backend:
    hash: $remote_addr consistent
    servers:
      - 127.0.0.1:7001 weight=2
servers:
  - listen:
      - 127.0.0.1:9000 backlog=100 reuseport
      - 127.0.0.1:9001
    proxy_pass: backend
    proxy_connect_timeout: 2s
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return load_config(str(path))


def test_the_model_is_frozen(cfg):
    srv = cfg.servers[0]
    up = cfg.upstreams["backend"]
    for obj, attr in ((srv.s, "proxy_timeout"), (cfg.main, "worker_processes"),
                      (srv.listens[0], "backlog"), (up, "method"), (up.servers[0], "weight"),
                      (cfg.groups[0], "servers"), (cfg.error_log, "target"), (srv.source, "file")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, None)
    assert not hasattr(srv.s, "__dict__")  # slots
    assert srv.s.proxy_timeout == 20.0 and srv.s.proxy_connect_timeout == 2.0


def test_listen_is_a_hashable_listen_spec(cfg):
    a, b = cfg.servers[0].listens
    assert isinstance(a, model.ListenSpec)
    assert a.backlog == 100 and a.reuseport and b.backlog == 511
    specs = {a.spec: "sock-a", b.spec: "sock-b"}
    assert specs[dataclasses.replace(a, text="other", line=99).spec] == "sock-a"  # not part of it
    assert a.spec != dataclasses.replace(a, backlog=5).spec
    # what makes the socket the same for a reload: address, ipv6only, reuseport
    assert a.spec.socket_key == dataclasses.replace(a, backlog=5).spec.socket_key
    assert a.spec.socket_key != dataclasses.replace(a, reuseport=False).spec.socket_key


def test_source_maps_give_each_directive_its_line(cfg, tmp_path):
    srv = cfg.servers[0]
    assert srv.source.line("proxy_connect_timeout") == 12
    assert srv.source.line("proxy_timeout") == 1  # inherited: the top level's line
    assert srv.source.get("ssl_protocols") is None and srv.source.line("ssl_protocols", 7) == 7
    # where the value starts, as errors about it are reported: the list under "listen:"
    assert srv.source.where("listen") == f"{tmp_path / 'c.yaml'}:9"
    assert cfg.source["upstreams"] == 3 and cfg.source["proxy_timeout"] == 1
    up = cfg.upstreams["backend"]
    assert up.source is not None and up.source["hash"] == 4 and up.source["servers"] == 6
