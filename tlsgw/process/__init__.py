"""The processes: the master (:mod:`tlsgw.process.master`) binds listeners
(:mod:`tlsgw.process.listeners`), forks workers (:mod:`tlsgw.process.worker`), talks to them over
a control channel (:mod:`tlsgw.process.control`) and names them (:mod:`tlsgw.process.procctl`).
"""
