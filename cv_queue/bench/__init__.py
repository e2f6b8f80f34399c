"""`cv-queue bench`: throughput of the seed's designs and ours, measured on one broker in one run."""
