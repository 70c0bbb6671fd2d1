"""Stages: inventory, plan, transfer, verify, rollback.

Must never import each other, nor anything above them (report, worker, front ends).
"""
