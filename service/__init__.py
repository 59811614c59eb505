"""``xiqa serve``: the DICOM node around the graph.

    modality --C-STORE--> listener --durable spool--> worker (the graph, per study)
                                                        |--> output folder
                                                        '--> outbox --C-STORE--> PACS

``settings`` holds what a site configures, ``spool`` keeps every acknowledged
instance on disk until it is processed, ``listener`` is the pynetdicom SCP,
``worker`` decides when a study is complete and runs ``xiqa.app`` on it,
``outbox`` forwards the outputs with retries, ``metrics`` exports Prometheus
figures and ``node`` starts and stops all of them.
"""
