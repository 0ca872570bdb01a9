//! Unit tests of the invisibility rules: one per rule, one per Listing of XEP-0018 §4.1.
