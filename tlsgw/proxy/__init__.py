"""The data path of a stream session: what runs for every connection and every chunk.

Modules here have one job each: :mod:`tlsgw.proxy.pump` moves the bytes (the session's two
protocols); :mod:`tlsgw.proxy.connect` connects it to an upstream (nginx's attempt loop);
:mod:`tlsgw.proxy.flow` decides when a transport reads;
:mod:`tlsgw.proxy.messages` is the error-log wording (nginx's texts and levels);
:mod:`tlsgw.proxy.record` is what a session leaves on record (status, counters, attempts).
"""
