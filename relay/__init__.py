"""The event relay (domain_events → Redis Streams, `relay.relay`) and the stream's debugging tail (`relay.tail`)."""
