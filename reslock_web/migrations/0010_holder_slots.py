from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("reslock", "0009_operation_fencing")]

    operations = [
        migrations.AddField(
            model_name="holder",
            name="slots",
            field=models.PositiveIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="holder",
            name="run_missing_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="limit",
            name="holder_slots",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="lockevent",
            name="slots",
            field=models.PositiveIntegerField(default=1),
        ),
    ]
