"""kmsbridge."""
