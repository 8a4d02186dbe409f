//! placeholder: filled by the packet-core work
