"""One partition per synthesis round: keys r000 (the seed round), r001, r002, …"""

from dagster import DynamicPartitionsDefinition

rounds = DynamicPartitionsDefinition(name="rounds")
