"""The Faust app, topic declarations, codecs and Herald's pure domain logic."""
