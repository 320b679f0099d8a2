"""Noise schedules of pretrained parameterizations (method.md §6)."""

from keras_ambient.schedules.vp_schedule import VPSchedule
