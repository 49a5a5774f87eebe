"""Files on local disks and object stores (s3://, gs://): atomic and exclusive writes, reads, listings, deletes."""
