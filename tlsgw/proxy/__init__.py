"""The data path of a stream session: what runs for every connection and every chunk.

Modules here have one job each: :mod:`tlsgw.proxy.flow` decides when a transport reads;
:mod:`tlsgw.proxy.messages` is the error-log wording (nginx's texts and levels);
:mod:`tlsgw.proxy.record` is what a session leaves on record (status, counters, attempts).
"""
