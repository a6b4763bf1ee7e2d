"""Tests of linksvc.signins: the sign-in flow and its pages."""
