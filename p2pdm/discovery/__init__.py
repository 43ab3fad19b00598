"""Finding peers without configuration: mDNS on the local link (`mdns`)."""
