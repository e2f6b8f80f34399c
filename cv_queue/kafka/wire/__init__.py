"""The records: what the broker layer consumes and produces, parsed and built once.

- `records.py`: the plain records passed around (SourceRecord, OutputRecord, Failure); start here.
- `delivery.py`: a consumed record's `cvq.` bookkeeping, parsed once at intake into a Delivery.
- `envelope.py`: the records written for a job that did not finish (retry records, dead letters, parked letters),
  and `read_dead_letter`, their inverse.
- `fit.py`: sizing each output to its topic's max.message.bytes (shrinking dead letters to fit).

The bottom of the layer: it imports no other subpackage of cv_queue.kafka, only cv_queue.errors, headers, lanes and
messages.
"""
