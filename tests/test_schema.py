"""The directive table (tlsgw/config/schema/): assembled from an explicit list of feature
modules, every value parsed through it, and each entry carrying the nginx facts an importer of
nginx.conf needs (name there, contexts, arity)."""

from __future__ import annotations

import pytest

from tlsgw.config import schema
from tlsgw.config.schema import base

ALL = [*schema.DIRECTIVES, *schema.LISTEN_PARAMS]


@pytest.mark.parametrize("d", ALL, ids=lambda d: f"{d.contexts[0]}:{d.name}")
def test_every_directive_and_parameter_has_nginx_facts(d):
    facts = d.nginx
    assert isinstance(facts, schema.Nginx), f"{d.name}: no nginx facts"
    assert facts.arity in schema.ARITIES
    if facts.name is None:
        assert facts.contexts == ()
        return
    assert facts.contexts and set(facts.contexts) <= set(schema.NGINX_CONTEXTS)
    # where tlsgw allows it, nginx does too (the YAML level for each nginx context)
    where = {"main": {"main", "stream"}, "server": {"server"}, "upstream": {"upstream"},
             "peer": {"upstream server parameter"}, "listen": {"listen parameter"}}
    for c in d.contexts:
        assert where[c] & set(facts.contexts), (d.name, c, facts.contexts)
    if facts.arity == "flag":
        assert d.parse is schema.base.flag, d.name  # on | off, as nginx's NGX_CONF_FLAG
    if facts.arity in ("none", "none, one or two") and "upstream" in d.contexts:
        assert facts.no_args is not None, d.name  # the YAML value for "least_conn;"


def test_parameters_are_declared_once_and_listed_by_their_directive():
    listen = schema.BY_CONTEXT["server"]["listen"]
    assert listen.params == schema.LISTEN_PARAMS
    assert schema.BY_CONTEXT["listen"] == {p.name: p for p in schema.LISTEN_PARAMS}
    servers = schema.BY_CONTEXT["upstream"]["servers"]
    assert servers.params == schema.PEER_PARAMS
    assert schema.BY_CONTEXT["peer"] == {p.name: p for p in schema.PEER_PARAMS}
    for p in (*schema.LISTEN_PARAMS, *schema.PEER_PARAMS):
        assert p.doc and p.syntax.startswith(p.name)
        assert (p.parse is None) == ("=" not in p.syntax), p.name


def test_features_are_an_explicit_tuple():
    assert (schema.core, schema.logging, schema.proxy, schema.proxy_protocol, schema.tls,
            schema.upstream, schema.health, schema.watch, schema.admin, schema.discovery, schema.preread, schema.udp, schema.limits) == schema.FEATURES
    assert [d for f in schema.FEATURES for d in f.DIRECTIVES] == schema.DIRECTIVES
    names = [(d.name, d.contexts) for d in schema.DIRECTIVES]
    assert len(names) == len(set(names))


def test_nginx_facts_map_a_method_line_to_its_yaml_value():
    """What a converter does with ``least_conn;`` or ``hash $remote_addr consistent;``:
    the nginx facts alone say which YAML key and value to write."""
    for line, kind in (("least_conn", "least_conn"), ("random", "random"),
                       ("random two least_conn", "random_two"),
                       ("hash $remote_addr consistent", "hash_consistent")):
        assert schema.method_from_nginx(line.split()).method.kind == kind


def test_nginx_facts_are_validated():
    with pytest.raises(ValueError):
        base.Nginx("x", ("http",), "one")
    with pytest.raises(ValueError):
        base.Nginx("x", ("stream",), "TAKE1")
